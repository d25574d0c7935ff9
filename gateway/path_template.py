"""Path templates of ``google.api.http`` rules, parsed and compiled to regular expressions.

The grammar is the one of ``google/api/http.proto``::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

Templates are matched against the *raw* (still percent-encoded) request path so that an encoded
``/`` inside a single-segment variable does not split it; captured values are decoded after the
match, keeping ``%2F`` encoded in multi-segment (``**``) variables as grpc-gateway does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

# One path segment: a literal, "*" (exactly one segment) or "**" (zero or more segments).
_STAR: Final = "*"
_DOUBLE_STAR: Final = "**"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}=*:]+")

# Specificity of a segment kind when two templates match the same path: lower wins.
_LITERAL_RANK: Final = 0
_STAR_RANK: Final = 1
_DOUBLE_STAR_RANK: Final = 2


class TemplateSyntaxError(ValueError):
    """A ``google.api.http`` path template does not follow the grammar of http.proto."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A ``{field.path=segments}`` variable of a template.

    Attributes:
        field_path: The request field the captured value is assigned to, e.g. ``("session", "id")``.
        segments: The sub-pattern the variable matches; ``("*",)`` when the template wrote none.
    """

    field_path: tuple[str, ...]
    segments: tuple[str, ...]

    @property
    def name(self) -> str:
        """The dotted field path, e.g. ``session.id``."""
        return ".".join(self.field_path)

    @property
    def parameter_name(self) -> str:
        """The OpenAPI parameter name: the field path with ``_`` for ``.``.

        Tools fill path templates with ``str.format``-like code, where ``{a.b}`` would mean an
        attribute lookup.
        """
        return "_".join(self.field_path)

    @property
    def multi_segment(self) -> bool:
        """Whether the variable can capture a value that contains ``/``."""
        return len(self.segments) > 1 or _DOUBLE_STAR in self.segments

    @property
    def literal_value(self) -> str | None:
        """The value of a variable whose pattern is only literals (``{name=operations}``)."""
        if any(s in (_STAR, _DOUBLE_STAR) for s in self.segments):
            return None
        return "/".join(self.segments)

    @property
    def whole(self) -> bool:
        """Whether the variable is one plain segment (``{id}``), its value the whole field."""
        return self.segments == (_STAR,)

    def openapi_parts(self) -> tuple[list[str], list[PathParameter]]:
        """The variable as OpenAPI path segments: literals kept, each wildcard a parameter.

        ``{name=operations/*}`` becomes ``operations/{name}``: OpenAPI tools cannot put a
        ``/`` in a parameter, and the gateway rebuilds ``name`` from the whole matched text.
        """
        wildcards = [s for s in self.segments if s in (_STAR, _DOUBLE_STAR)]
        parts: list[str] = []
        parameters: list[PathParameter] = []
        for segment in self.segments:
            if segment not in (_STAR, _DOUBLE_STAR):
                parts.append(segment)
                continue
            name = self.parameter_name
            if len(wildcards) > 1:
                name = f"{name}_{len(parameters) + 1}"
            parameters.append(PathParameter(name=name, variable=self, segment=segment))
            parts.append("{" + name + "}")
        return parts, parameters


@dataclass(frozen=True, slots=True)
class PathParameter:
    """One parameter of a template's OpenAPI path.

    Attributes:
        name: The parameter name.
        variable: The variable it belongs to.
        segment: The wildcard it stands for, ``*`` or ``**``.
    """

    name: str
    variable: Variable
    segment: str


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed and compiled path template.

    Attributes:
        source: The template as written in the proto.
        segments: Top-level segments: literals, ``*``, ``**`` or Variables.
        verb: The custom verb after ``:`` ("" when none).
        variables: The variables in order of appearance.
        specificity: Sort key; among templates matching the same path the smallest wins, so
            literal segments beat variables and a template with a verb beats one without.
    """

    source: str
    segments: tuple[str | Variable, ...]
    verb: str
    variables: tuple[Variable, ...]
    specificity: tuple[tuple[int, ...], int]
    _regex: re.Pattern[str]

    @classmethod
    def parse(cls, source: str) -> PathTemplate:
        """Parses and compiles a template.

        Raises:
            TemplateSyntaxError: The template does not follow http.proto's grammar.
        """
        return _Parser(source).parse()

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Matches a raw (percent-encoded) request path.

        Returns:
            The decoded value of every variable by dotted field path, or None without a match.
        """
        found = self._regex.fullmatch(raw_path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, variable in enumerate(self.variables):
            raw = found.group(f"v{index}")
            if raw is None:  # a variable made only of "**" that matched zero segments
                raw = ""
            values[variable.name] = _decode(raw, multi_segment=variable.multi_segment)
        return values

    def openapi_path(self) -> tuple[str, list[PathParameter]]:
        """The template as an OpenAPI path and its parameters.

        ``{id}`` stays ``{id}``, ``{a.b}`` becomes ``{a_b}``, literal-only variables are written
        out, and a variable with a sub-pattern shows its literals with one parameter per
        wildcard (see ``Variable.openapi_parts``).
        """
        parts: list[str] = []
        parameters: list[PathParameter] = []
        for segment in self.segments:
            if isinstance(segment, Variable):
                variable_parts, variable_parameters = segment.openapi_parts()
                parts.extend(variable_parts)
                parameters.extend(variable_parameters)
            else:
                parts.append(segment)
        path = "/" + "/".join(parts)
        return (f"{path}:{self.verb}" if self.verb else path), parameters


def _decode(raw: str, *, multi_segment: bool) -> str:
    """Percent-decodes a captured value; multi-segment values keep ``%2F`` (an escaped slash)."""
    if multi_segment:
        return "%2F".join(unquote(part) for part in re.split(r"(?i)%2F", raw))
    return unquote(raw)


def _segment_regex(segment: str) -> str:
    if segment == _STAR:
        return "[^/]+"
    if segment == _DOUBLE_STAR:
        return "[^/]+(?:/[^/]+)*"
    return re.escape(segment)


def _segments_regex(segments: tuple[str, ...], *, leading_slash: bool) -> str:
    """Regex of consecutive segments; a trailing ``**`` may match zero segments."""
    pieces: list[str] = []
    for index, segment in enumerate(segments):
        separator = "/" if (index > 0 or leading_slash) else ""
        if segment == _DOUBLE_STAR:
            # Zero or more segments: the separator before them is optional too.
            pieces.append(f"(?:{separator}[^/]+(?:/[^/]+)*)?")
        else:
            pieces.append(separator + _segment_regex(segment))
    return "".join(pieces)


def _rank(segment: str) -> int:
    if segment == _STAR:
        return _STAR_RANK
    if segment == _DOUBLE_STAR:
        return _DOUBLE_STAR_RANK
    return _LITERAL_RANK


class _Parser:
    """Recursive-descent parser of one template."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._pos = 0

    def parse(self) -> PathTemplate:
        source = self._source
        if not source.startswith("/"):
            raise self._error("must start with '/'")
        self._pos = 1
        segments = self._segments(in_variable=False)
        verb = ""
        if self._peek() == ":":
            self._pos += 1
            verb = self._literal()
        if self._pos != len(source):
            raise self._error(f"unexpected {source[self._pos]!r}")
        flat: list[str] = []
        variables: list[Variable] = []
        for segment in segments:
            if isinstance(segment, Variable):
                variables.append(segment)
                flat.extend(segment.segments)
            else:
                flat.append(segment)
        if _DOUBLE_STAR in flat[:-1]:
            raise self._error("'**' must be the last segment")
        names = [v.name for v in variables]
        if len(set(names)) != len(names):
            raise self._error("a field is bound twice")
        regex = self._compile(segments, verb)
        specificity = (tuple(_rank(s) for s in flat), 0 if verb else 1)
        return PathTemplate(
            source=source,
            segments=tuple(segments),
            verb=verb,
            variables=tuple(variables),
            specificity=specificity,
            _regex=re.compile(regex),
        )

    @staticmethod
    def _compile(segments: list[str | Variable], verb: str) -> str:
        pieces: list[str] = []
        index = 0
        for segment in segments:
            if isinstance(segment, Variable):
                body = _segments_regex(segment.segments, leading_slash=False)
                if segment.segments[0] == _DOUBLE_STAR:
                    # "/{x=**}" may match zero segments: the slash goes inside the optional part.
                    pieces.append(f"(?:/(?P<v{index}>{body}))?")
                else:
                    pieces.append(f"/(?P<v{index}>{body})")
                index += 1
            else:
                pieces.append(_segments_regex((segment,), leading_slash=True))
        if verb:
            pieces.append(":" + re.escape(verb))
        return "".join(pieces)

    def _segments(self, *, in_variable: bool) -> list[str | Variable]:
        segments: list[str | Variable] = [self._segment(in_variable=in_variable)]
        while self._peek() == "/":
            self._pos += 1
            segments.append(self._segment(in_variable=in_variable))
        return segments

    def _segment(self, *, in_variable: bool) -> str | Variable:
        char = self._peek()
        if char == "*":
            if self._source.startswith("**", self._pos):
                self._pos += 2
                return _DOUBLE_STAR
            self._pos += 1
            return _STAR
        if char == "{":
            if in_variable:
                raise self._error("variables cannot nest")
            return self._variable()
        return self._literal()

    def _variable(self) -> Variable:
        self._pos += 1  # "{"
        field_path = [self._ident()]
        while self._peek() == ".":
            self._pos += 1
            field_path.append(self._ident())
        sub: tuple[str, ...] = (_STAR,)
        if self._peek() == "=":
            self._pos += 1
            parsed = self._segments(in_variable=True)
            sub = tuple(s for s in parsed if isinstance(s, str))
        if self._peek() != "}":
            raise self._error("expected '}'")
        self._pos += 1
        return Variable(field_path=tuple(field_path), segments=sub)

    def _ident(self) -> str:
        found = _IDENT.match(self._source, self._pos)
        if found is None:
            raise self._error("expected a field name")
        self._pos = found.end()
        return found.group()

    def _literal(self) -> str:
        found = _LITERAL.match(self._source, self._pos)
        if found is None:
            raise self._error("expected a literal segment")
        self._pos = found.end()
        return found.group()

    def _peek(self) -> str:
        return self._source[self._pos] if self._pos < len(self._source) else ""

    def _error(self, problem: str) -> TemplateSyntaxError:
        return TemplateSyntaxError(
            f"invalid path template {self._source!r} at offset {self._pos}: {problem}"
        )
