"""JSON Schemas of proto messages, enums and fields, following the proto3 JSON mapping.

int64 kinds are strings (format int64), Timestamp a date-time string, Duration a ``"3.5s"``
string, FieldMask a comma-separated string, Struct an object, Value any JSON, wrappers their
scalar or null, enums the strings of their value names, maps objects. Field behaviours become
``required`` (REQUIRED), ``readOnly`` (OUTPUT_ONLY) and ``writeOnly`` (INPUT_ONLY); a oneof
becomes a ``not`` constraint forbidding two of its members together.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations
from typing import Any, Final

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.comments import SourceComments
from gateway.fields import (
    ANY,
    DURATION,
    EMPTY,
    FIELD_MASK,
    LIST_VALUE,
    NULL_VALUE,
    STRUCT,
    TIMESTAMP,
    VALUE,
    WRAPPERS,
    is_map,
    map_fields,
)

Schema = dict[str, Any]

REF_PREFIX: Final = "#/components/schemas/"
_INT32_RANGE: Final = {"minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32_RANGE: Final = {"minimum": 0, "maximum": 2**32 - 1}

_SCALARS: Final[dict[int, Schema]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    # Larger magnitudes are refused by the JSON parser rather than stored as infinity.
    FieldDescriptor.TYPE_FLOAT: {
        "type": "number",
        "format": "float",
        "minimum": -3.4028234663852886e38,
        "maximum": 3.4028234663852886e38,
    },
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32", **_INT32_RANGE},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32", **_INT32_RANGE},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32", **_INT32_RANGE},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", **_UINT32_RANGE},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32", **_UINT32_RANGE},
    # 64-bit integers are JSON strings (they do not fit a double). The patterns keep to
    # values that cannot overflow; input also accepts JSON numbers.
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,18}$"},
    FieldDescriptor.TYPE_SINT64: {
        "type": "string",
        "format": "int64",
        "pattern": "^-?[0-9]{1,18}$",
    },
    FieldDescriptor.TYPE_SFIXED64: {
        "type": "string",
        "format": "int64",
        "pattern": "^-?[0-9]{1,18}$",
    },
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,19}$"},
    FieldDescriptor.TYPE_FIXED64: {
        "type": "string",
        "format": "uint64",
        "pattern": "^[0-9]{1,19}$",
    },
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

_WELL_KNOWN: Final[dict[str, Schema]] = {
    TIMESTAMP: {"type": "string", "format": "date-time"},
    DURATION: {
        "type": "string",
        # At most 11 digits of seconds: protobuf caps durations at 315,576,000,000 s.
        "pattern": "^-?[0-9]{1,11}(\\.[0-9]{1,9})?s$",
        "description": "A duration in seconds with an `s` suffix, e.g. `3.5s`.",
    },
    FIELD_MASK: {
        "type": "string",
        "description": "Comma-separated field paths, e.g. `fact,metadata`.",
    },
    STRUCT: {"type": "object", "additionalProperties": True},
    VALUE: {"description": "Any JSON value."},
    LIST_VALUE: {"type": "array", "items": {}},
    EMPTY: {"type": "object", "additionalProperties": False},
    ANY: {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}

# Map keys are JSON object keys (strings); integer and bool keys are constrained by pattern,
# to digits counts that cannot overflow the key type.
_KEY_PATTERNS: Final = {
    FieldDescriptor.TYPE_BOOL: "^(true|false)$",
    FieldDescriptor.TYPE_INT32: "^-?[0-9]{1,9}$",
    FieldDescriptor.TYPE_SINT32: "^-?[0-9]{1,9}$",
    FieldDescriptor.TYPE_SFIXED32: "^-?[0-9]{1,9}$",
    FieldDescriptor.TYPE_UINT32: "^[0-9]{1,9}$",
    FieldDescriptor.TYPE_FIXED32: "^[0-9]{1,9}$",
    FieldDescriptor.TYPE_INT64: "^-?[0-9]{1,18}$",
    FieldDescriptor.TYPE_SINT64: "^-?[0-9]{1,18}$",
    FieldDescriptor.TYPE_SFIXED64: "^-?[0-9]{1,18}$",
    FieldDescriptor.TYPE_UINT64: "^[0-9]{1,19}$",
    FieldDescriptor.TYPE_FIXED64: "^[0-9]{1,19}$",
}


def ref(name: str) -> Schema:
    """A reference to a component schema."""
    return {"$ref": REF_PREFIX + name}


def behaviors(field: FieldDescriptor) -> frozenset[int]:
    """The field's google.api.field_behavior values."""
    options = field.GetOptions()
    return frozenset(options.Extensions[field_behavior_pb2.field_behavior])


def is_required(field: FieldDescriptor) -> bool:
    """REQUIRED and not OUTPUT_ONLY (an output-only field is never sent by the client)."""
    found = behaviors(field)
    return field_behavior_pb2.REQUIRED in found and field_behavior_pb2.OUTPUT_ONLY not in found


def real_oneofs(message: Descriptor) -> list[list[FieldDescriptor]]:
    """The members of each oneof, leaving out proto3 ``optional`` (synthetic) oneofs."""
    groups: list[list[FieldDescriptor]] = []
    for oneof in message.oneofs:
        fields = list(oneof.fields)
        synthetic = len(fields) == 1 and oneof.name == f"_{fields[0].name}"
        if not synthetic:
            groups.append(fields)
    return groups


class SchemaBuilder:
    """Builds component schemas on demand; ``components`` holds every schema referenced."""

    def __init__(self, comments: SourceComments) -> None:
        """Creates a builder reading descriptions from ``comments``."""
        self.comments = comments
        self.components: dict[str, Schema] = {}

    def message(self, message: Descriptor) -> Schema:
        """The schema to use for a message: inline for well-known types, else a reference."""
        special = _WELL_KNOWN.get(message.full_name)
        if special is not None:
            return dict(special)
        wrapped = WRAPPERS.get(message.full_name)
        if wrapped is not None:
            return _nullable(_SCALARS[wrapped])
        if message.full_name not in self.components:
            self.components[message.full_name] = {}  # placeholder: recursive types end here
            self.components[message.full_name] = self._message_schema(message)
        return ref(message.full_name)

    def variant(
        self,
        message: Descriptor,
        *,
        name: str,
        without: Iterable[str] = (),
        drop_required: bool = False,
        description: str | None = None,
    ) -> Schema:
        """A component derived from a message: some properties removed, or nothing required.

        Used for a ``body: "*"`` whose path fields are not in the body, and for the resource
        of a PATCH, where an update mask makes every field optional.
        """
        self.message(message)
        base = self._message_schema(message)
        removed = set(without)
        properties = {k: v for k, v in base["properties"].items() if k not in removed}
        schema: Schema = {**base, "properties": properties}
        required = [f for f in base.get("required", ()) if f not in removed and not drop_required]
        schema.pop("required", None)
        if required:
            schema["required"] = required
        if "allOf" in base:
            kept = [c for c in base["allOf"] if not _mentions(c, removed)]
            if kept:
                schema["allOf"] = kept
            else:
                schema.pop("allOf")
        if description is not None:
            schema["description"] = description
        self.components[name] = schema
        return ref(name)

    def field(self, field: FieldDescriptor, *, documented: bool = True) -> Schema:
        """The schema of a field; with its description and behaviours when ``documented``."""
        if is_map(field):
            key_field, value_field = map_fields(field)
            schema: Schema = {"type": "object", "additionalProperties": self._element(value_field)}
            pattern = _key_pattern(key_field)
            if pattern is not None:
                schema["propertyNames"] = {"pattern": pattern}
        elif field.is_repeated:
            schema = {"type": "array", "items": self._element(field)}
        else:
            schema = self._element(field)
        if documented:
            self._document(schema, field)
        return schema

    def enum(self, enum: EnumDescriptor) -> Schema:
        """A reference to an enum's component (``null`` for google.protobuf.NullValue)."""
        if enum.full_name == NULL_VALUE:
            return {"type": "null"}
        if enum.full_name not in self.components:
            lines = [self.comments.get(enum.full_name)]
            for value in enum.values:
                comment = self.comments.get(f"{enum.full_name}.{value.name}")
                lines.append(f"- `{value.name}`: {comment}" if comment else f"- `{value.name}`")
            self.components[enum.full_name] = {
                "type": "string",
                "enum": [value.name for value in enum.values],
                "description": "\n".join(line for line in lines if line),
            }
        return ref(enum.full_name)

    def scalar(self, field: FieldDescriptor) -> Schema:
        """The schema of one value of a scalar/enum/string-like field (path/query parameters)."""
        return self._element(field)

    def _message_schema(self, message: Descriptor) -> Schema:
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in message.fields:
            properties[field.name] = self.field(field)
            if is_required(field):
                required.append(field.name)
        schema: Schema = {"type": "object"}
        description = self.comments.get(message.full_name)
        oneof_notes: list[str] = []
        exclusive: list[Schema] = []
        for members in real_oneofs(message):
            names = [member.name for member in members]
            oneof_notes.append("At most one of " + ", ".join(f"`{n}`" for n in names) + ".")
            pairs = [{"required": list(pair)} for pair in combinations(names, 2)]
            if pairs:
                exclusive.append({"not": pairs[0] if len(pairs) == 1 else {"anyOf": pairs}})
        text = "\n\n".join(part for part in (description, " ".join(oneof_notes)) if part)
        if text:
            schema["description"] = text
        schema["properties"] = properties
        if required:
            schema["required"] = required
        if exclusive:
            schema["allOf"] = exclusive
        schema["additionalProperties"] = False
        return schema

    def _element(self, field: FieldDescriptor) -> Schema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def _document(self, schema: Schema, field: FieldDescriptor) -> None:
        found = behaviors(field)
        notes = [self.comments.get(field.full_name)]
        if field_behavior_pb2.IMMUTABLE in found:
            notes.append("Immutable: set on creation only.")
        if field.containing_oneof is not None and not _synthetic(field):
            notes.append(f"Part of oneof `{field.containing_oneof.name}`.")
        text = " ".join(note for note in notes if note)
        if text:
            schema["description"] = text
        if field_behavior_pb2.OUTPUT_ONLY in found:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in found:
            schema["writeOnly"] = True
        if field.GetOptions().deprecated:
            schema["deprecated"] = True


def _synthetic(field: FieldDescriptor) -> bool:
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) == 1 and oneof.name == f"_{field.name}"


def _nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def _key_pattern(key_field: FieldDescriptor) -> str | None:
    return _KEY_PATTERNS.get(key_field.type)


def _mentions(constraint: Schema, names: set[str]) -> bool:
    """Whether a oneof constraint names one of ``names``."""
    inner = constraint.get("not", {})
    groups = inner.get("anyOf", [inner])
    return any(name in group.get("required", ()) for group in groups for name in names)
