"""AIP-160 filters compiled to SQLAlchemy where-clauses over an allow-list of fields.

A List RPC declares which fields may be filtered and how they map to columns; the client's
filter string is parsed and compiled to a boolean SQL expression with every literal bound as a
parameter. Anything outside the supported subset is INVALID_ARGUMENT naming the problem.

Supported (a subset of https://google.aip.dev/160):

* comparisons ``field OP value`` with OP one of ``= != < <= > >=`` and ``:`` (has);
* ``AND``, ``OR``, ``NOT`` (or a leading ``-``), parentheses, and juxtaposition as AND;
* values: strings in double or single quotes, bare words, numbers, ``true`` / ``false``;
  timestamps as RFC 3339 strings (``created_at > "2025-01-01T00:00:00Z"``);
* map fields with ``field.key`` (``labels.team = "support"``, ``scope.project = alpha``) and
  key presence ``labels:team`` / ``labels.team:*``;
* a trailing ``*`` in a string value of ``=`` / ``!=`` matches by prefix (``branch = "root.*"``).

As AIP-160 specifies, OR binds tighter than AND: ``a = 1 AND b = 2 OR c = 3`` means
``a = 1 AND (b = 2 OR c = 3)``.

Logic is two-valued: a comparison on a missing value (SQL NULL, absent map key) is false, so
``NOT`` always selects exactly the complement. Comparisons on non-null columns compile to plain
``column OP value`` so that indexes apply.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import and_, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

from ciq_runtime.errors import InvalidArgument

__all__ = [
    "FilterField",
    "MapField",
    "ValueKind",
    "compile_filter",
]

_MAX_LENGTH: Final = 4096
_MAX_DEPTH: Final = 16
_MAX_RESTRICTIONS: Final = 64


class ValueKind(enum.Enum):
    """How the values of a field are typed and compared."""

    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    UUID = "uuid"


@dataclass(frozen=True, slots=True)
class FilterField:
    """A scalar field clients may filter on.

    Attributes:
        column: The SQL column (or expression) holding the value.
        kind: How literal values are parsed and compared.
        nullable: The column may be NULL; comparisons then treat NULL as "no value" (false for
            every operator but ``!=``).
    """

    column: ColumnElement[Any]
    kind: ValueKind = ValueKind.STRING
    nullable: bool = False


@dataclass(frozen=True, slots=True)
class MapField:
    """A JSONB object of string values filtered with ``field.key`` (``labels.team``).

    Attributes:
        column: The JSONB column; it must hold an object (never SQL NULL).
    """

    column: ColumnElement[Any]


FilterFields = Mapping[str, FilterField | MapField]


class _Tok(enum.Enum):
    LPAREN = "("
    RPAREN = ")"
    AND = "AND"
    OR = "OR"
    NOT = "NOT"
    MINUS = "-"
    COMPARATOR = "comparator"
    STRING = "string"
    NUMBER = "number"
    WORD = "word"
    END = "end of filter"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Tok
    text: str
    pos: int  # 1-based column, for messages


_COMPARATORS: Final = ("<=", ">=", "!=", "=", "<", ">", ":")
_NUMBER_RE: Final = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.*-])")
_WORD_RE: Final = re.compile(r"[A-Za-z0-9_*][A-Za-z0-9_.*\-]*")
_KEYWORDS: Final = {"AND": _Tok.AND, "OR": _Tok.OR, "NOT": _Tok.NOT}
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _tokenize(text: str, field: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        pos = i + 1
        if ch in "()":
            tokens.append(_Token(_Tok.LPAREN if ch == "(" else _Tok.RPAREN, ch, pos))
            i += 1
            continue
        op = next((c for c in _COMPARATORS if text.startswith(c, i)), None)
        if op is not None:
            tokens.append(_Token(_Tok.COMPARATOR, op, pos))
            i += len(op)
            continue
        if ch == "-":
            tokens.append(_Token(_Tok.MINUS, ch, pos))
            i += 1
            continue
        if ch in "\"'":
            value, i = _read_string(text, i, field)
            tokens.append(_Token(_Tok.STRING, value, pos))
            continue
        number = _NUMBER_RE.match(text, i)
        if number:
            tokens.append(_Token(_Tok.NUMBER, number.group(), pos))
            i = number.end()
            continue
        word = _WORD_RE.match(text, i)
        if word:
            value = word.group()
            tokens.append(_Token(_KEYWORDS.get(value, _Tok.WORD), value, pos))
            i = word.end()
            continue
        raise InvalidArgument(f"filter: unexpected character {ch!r} at position {pos}", field=field)
    tokens.append(_Token(_Tok.END, "", n + 1))
    return tokens


def _read_string(text: str, start: int, field: str) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\" and i + 1 < len(text):
            escaped = text[i + 1]
            if escaped not in _ESCAPES:
                raise InvalidArgument(
                    f"filter: unknown escape \\{escaped} at position {i + 1}", field=field
                )
            out.append(_ESCAPES[escaped])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise InvalidArgument(
        f"filter: string starting at position {start + 1} is not closed", field=field
    )


# ---------------------------------------------------------------------------------------------
# Parser: recursive descent over AIP-160's grammar, compiling as it goes.
# ---------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[_Token], fields: FilterFields, field: str) -> None:
        self._tokens = tokens
        self._i = 0
        self._fields = fields
        self._field = field
        self._depth = 0
        self._restrictions = 0

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _next(self) -> _Token:
        token = self._tokens[self._i]
        self._i += 1
        return token

    def _error(self, message: str) -> InvalidArgument:
        return InvalidArgument(f"filter: {message}", field=self._field)

    def _unexpected(self, token: _Token, wanted: str) -> InvalidArgument:
        found = "the end of the filter" if token.kind is _Tok.END else repr(token.text)
        return self._error(f"expected {wanted} at position {token.pos}, found {found}")

    def parse(self) -> ColumnElement[bool]:
        expr = self._expression()
        token = self._peek()
        if token.kind is not _Tok.END:
            raise self._unexpected(token, "AND, OR or the end of the filter")
        return expr

    # expression := sequence { AND sequence }
    def _expression(self) -> ColumnElement[bool]:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise self._error(f"nested deeper than {_MAX_DEPTH} levels")
        parts = [self._sequence()]
        while self._peek().kind is _Tok.AND:
            self._next()
            parts.append(self._sequence())
        self._depth -= 1
        return parts[0] if len(parts) == 1 else and_(*parts)

    # sequence := factor { factor }   (juxtaposition is AND)
    def _sequence(self) -> ColumnElement[bool]:
        parts = [self._factor()]
        while self._peek().kind in (_Tok.LPAREN, _Tok.NOT, _Tok.MINUS, _Tok.WORD):
            parts.append(self._factor())
        return parts[0] if len(parts) == 1 else and_(*parts)

    # factor := term { OR term }
    def _factor(self) -> ColumnElement[bool]:
        parts = [self._term()]
        while self._peek().kind is _Tok.OR:
            self._next()
            parts.append(self._term())
        return parts[0] if len(parts) == 1 else or_(*parts)

    # term := [ NOT | - ] simple
    def _term(self) -> ColumnElement[bool]:
        if self._peek().kind in (_Tok.NOT, _Tok.MINUS):
            self._next()
            return not_(self._simple())
        return self._simple()

    # simple := restriction | ( expression )
    def _simple(self) -> ColumnElement[bool]:
        token = self._peek()
        if token.kind is _Tok.LPAREN:
            self._next()
            inner = self._expression()
            closing = self._next()
            if closing.kind is not _Tok.RPAREN:
                raise self._unexpected(closing, "')'")
            return inner
        if token.kind is not _Tok.WORD:
            raise self._unexpected(token, "a field name or '('")
        return self._restriction()

    # restriction := member comparator arg
    def _restriction(self) -> ColumnElement[bool]:
        self._restrictions += 1
        if self._restrictions > _MAX_RESTRICTIONS:
            raise self._error(f"more than {_MAX_RESTRICTIONS} comparisons")
        member = self._next()
        comparator = self._next()
        if comparator.kind is _Tok.LPAREN:
            raise self._error(f"functions are not supported (position {member.pos})")
        if comparator.kind is not _Tok.COMPARATOR:
            raise self._error(
                f"{member.text!r} at position {member.pos} must be compared to a value "
                '(e.g. field = "value"); free-text search is not supported'
            )
        value = self._arg(comparator)
        return self._compile(member, comparator.text, value)

    def _arg(self, comparator: _Token) -> _Token:
        token = self._next()
        if token.kind is _Tok.MINUS and self._peek().kind is _Tok.NUMBER:
            number = self._next()
            return _Token(_Tok.NUMBER, "-" + number.text, token.pos)
        if token.kind in (_Tok.STRING, _Tok.NUMBER, _Tok.WORD):
            return token
        if token.kind in (_Tok.AND, _Tok.OR, _Tok.NOT):
            # A bare keyword as a value is almost always a missing value; quote it to mean it.
            raise self._error(
                f"expected a value after {comparator.text!r} at position {token.pos}, "
                f"found {token.text} (quote it to compare with the word)"
            )
        raise self._unexpected(token, f"a value after {comparator.text!r}")

    # ------------------------------------------------------------------ compilation

    def _compile(self, member: _Token, op: str, value: _Token) -> ColumnElement[bool]:
        path = member.text
        spec = self._fields.get(path)
        if spec is None:
            head, dot, key = path.partition(".")
            map_spec = self._fields.get(head)
            if dot and key and isinstance(map_spec, MapField):
                return self._compile_map_key(map_spec, path, key, op, value)
            raise self._error(
                f"unknown field {path!r}; filterable fields: {', '.join(self._names())}"
            )
        if isinstance(spec, MapField):
            if op != ":":
                raise self._error(
                    f"{path!r} is a map: compare one key ({path}.KEY {op} ...) "
                    f"or test a key with {path}:KEY"
                )
            return _has_key(spec.column, value.text)
        return self._compile_scalar(spec, path, op, value)

    def _names(self) -> list[str]:
        return sorted(f"{n}.KEY" if isinstance(s, MapField) else n for n, s in self._fields.items())

    def _compile_scalar(
        self, spec: FilterField, path: str, op: str, value: _Token
    ) -> ColumnElement[bool]:
        column = spec.column
        if op == ":" and value.text == "*" and value.kind is _Tok.WORD:
            return column.is_not(None) if spec.nullable else true()
        if op == ":":
            op = "="  # on a scalar, "has" is equality
        if spec.kind is ValueKind.STRING:
            text = value.text
            if op in ("=", "!=") and text.endswith("*"):
                matched = column.startswith(text[:-1], autoescape=True)
                return self._null_safe(spec, matched if op == "=" else not_(matched), op)
            return self._null_safe(spec, _compare(column, op, text), op)
        if op not in ("=", "!=", "<", "<=", ">", ">="):  # pragma: no cover - lexer guarantees
            raise self._error(f"operator {op!r} is not supported")
        literal: object
        if spec.kind is ValueKind.NUMBER:
            literal = self._number(path, value)
        elif spec.kind is ValueKind.BOOL:
            literal = self._bool(path, value)
            if op not in ("=", "!="):
                raise self._error(f"operator {op!r} is not supported for boolean field {path!r}")
        elif spec.kind is ValueKind.TIMESTAMP:
            literal = self._timestamp(path, value)
        else:
            literal = self._uuid(path, value)
            if op not in ("=", "!="):
                raise self._error(f"operator {op!r} is not supported for id field {path!r}")
        return self._null_safe(spec, _compare(column, op, literal), op)

    def _null_safe(
        self, spec: FilterField, comparison: ColumnElement[bool], op: str
    ) -> ColumnElement[bool]:
        if not spec.nullable:
            return comparison
        # NULL means "no value": it differs from every value and matches nothing else.
        if op == "!=":
            return or_(spec.column.is_(None), comparison)
        return and_(spec.column.is_not(None), comparison)

    def _compile_map_key(
        self, spec: MapField, path: str, key: str, op: str, value: _Token
    ) -> ColumnElement[bool]:
        column = spec.column
        if op == ":":
            if value.text == "*" and value.kind is _Tok.WORD:
                return _has_key(column, key)
            op = "="
        text = value.text
        if op in ("=", "!=") and not text.endswith("*"):
            # Containment (@>) can use a GIN index on the column; it is never NULL.
            contained = column.contains({key: text})
            return contained if op == "=" else not_(contained)
        element = column[key].astext
        if op in ("=", "!="):
            matched = and_(_has_key(column, key), element.startswith(text[:-1], autoescape=True))
            return matched if op == "=" else not_(matched)
        return and_(_has_key(column, key), _compare(element, op, text))

    def _number(self, path: str, value: _Token) -> float | int:
        try:
            number = float(value.text) if value.kind is not _Tok.WORD else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise self._error(f"{path!r} takes a number, got {value.text!r}")
        return int(number) if number.is_integer() and "." not in value.text else number

    def _bool(self, path: str, value: _Token) -> bool:
        lowered = value.text.lower()
        if lowered not in ("true", "false"):
            raise self._error(f"{path!r} takes true or false, got {value.text!r}")
        return lowered == "true"

    def _timestamp(self, path: str, value: _Token) -> datetime:
        try:
            parsed = datetime.fromisoformat(value.text)
        except ValueError:
            raise self._error(
                f'{path!r} takes an RFC 3339 timestamp such as "2025-01-31T12:00:00Z", '
                f"got {value.text!r}"
            ) from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)

    def _uuid(self, path: str, value: _Token) -> uuid.UUID:
        try:
            return uuid.UUID(value.text)
        except ValueError:
            raise self._error(f"{path!r} takes a UUID, got {value.text!r}") from None


def _has_key(column: ColumnElement[Any], key: str) -> ColumnElement[bool]:
    # JSONB's ``?`` operator; SQLAlchemy types the comparator method loosely.
    expression: ColumnElement[bool] = column.has_key(key)
    return expression


def _compare(column: ColumnElement[Any], op: str, value: object) -> ColumnElement[bool]:
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == "<":
        return column < value
    if op == "<=":
        return column <= value
    if op == ">":
        return column > value
    return column >= value


def compile_filter(
    text: str, fields: FilterFields, *, field: str = "filter"
) -> ColumnElement[bool]:
    """Compile an AIP-160 filter into a where-clause.

    Args:
        text: The client's filter; empty or blank means "everything".
        fields: The allow-list: filter path (``"user_id"``, ``"labels"``) to its column.
        field: Request field named in errors.

    Returns:
        A boolean SQL expression with every literal bound as a parameter (``true()`` for an
        empty filter).

    Raises:
        InvalidArgument: Syntax errors, unknown fields, unsupported operators and values that
            do not fit the field's type, each with a message naming the problem.
    """
    if len(text) > _MAX_LENGTH:
        raise InvalidArgument(f"filter is longer than {_MAX_LENGTH} characters", field=field)
    if "\x00" in text:
        raise InvalidArgument("filter contains a NUL character", field=field)
    if not text.strip():
        return true()
    return _Parser(_tokenize(text, field), fields, field).parse()
