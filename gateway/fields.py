"""Facts about protobuf fields the transcoder and the OpenAPI generator both need.

Which fields can be written as one string (path variables, query parameters), how such a string
becomes the proto3 JSON value that ``json_format`` parses, and how a dotted name given by a
client (proto names or lowerCamelCase JSON names) resolves to fields.
"""

from __future__ import annotations

from typing import Final, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import invalid_argument

TIMESTAMP: Final = "google.protobuf.Timestamp"
DURATION: Final = "google.protobuf.Duration"
FIELD_MASK: Final = "google.protobuf.FieldMask"
STRUCT: Final = "google.protobuf.Struct"
VALUE: Final = "google.protobuf.Value"
LIST_VALUE: Final = "google.protobuf.ListValue"
EMPTY: Final = "google.protobuf.Empty"
ANY: Final = "google.protobuf.Any"
NULL_VALUE: Final = "google.protobuf.NullValue"

# Wrapper message → the type of its single ``value`` field.
WRAPPERS: Final = {
    "google.protobuf.DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.TYPE_FLOAT,
    "google.protobuf.Int64Value": FieldDescriptor.TYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.TYPE_UINT64,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
    "google.protobuf.BytesValue": FieldDescriptor.TYPE_BYTES,
}

# Well-known messages whose JSON form is a single string (or a wrapped scalar): they can be
# given as one path or query value.
STRING_LIKE_MESSAGES: Final = frozenset({TIMESTAMP, DURATION, FIELD_MASK, *WRAPPERS})

# Well-known messages with a special JSON mapping: never treated as ordinary nested objects.
SPECIAL_JSON_MESSAGES: Final = frozenset(
    {*STRING_LIKE_MESSAGES, STRUCT, VALUE, LIST_VALUE, ANY, EMPTY}
)

# strconv.ParseBool's spellings, as grpc-gateway accepts them in query parameters.
_TRUE: Final = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def is_map(field: FieldDescriptor) -> bool:
    """Whether the field is a ``map<K, V>``."""
    message = field.message_type
    return message is not None and field.is_repeated and message.GetOptions().map_entry


def descriptor_of(message: Message) -> Descriptor:
    """A message's descriptor, typed as the descriptor API (upb's class implements it)."""
    return cast(Descriptor, message.DESCRIPTOR)


def plain_message(field: FieldDescriptor) -> Descriptor | None:
    """The message type of a field that is an ordinary message (not a map, not a special WKT)."""
    message = field.message_type
    if message is None or is_map(field) or message.full_name in SPECIAL_JSON_MESSAGES:
        return None
    return message


def is_plain_message(field: FieldDescriptor) -> bool:
    """Whether the field is a message without a special JSON mapping (and not a map)."""
    return plain_message(field) is not None


def map_fields(field: FieldDescriptor) -> tuple[FieldDescriptor, FieldDescriptor]:
    """The key and value fields of a map field's entry message."""
    entry = field.message_type
    assert entry is not None
    return entry.fields_by_name["key"], entry.fields_by_name["value"]


def accepts_string(field: FieldDescriptor) -> bool:
    """Whether one field value can be written as a single string (path/query parameter)."""
    if is_map(field):
        return False
    message = field.message_type
    if message is None:
        return True
    return message.full_name in STRING_LIKE_MESSAGES


def scalar_type(field: FieldDescriptor) -> int:
    """The scalar type a field is written as: its own, or the wrapped one for wrappers."""
    message = field.message_type
    if message is not None and message.full_name in WRAPPERS:
        return WRAPPERS[message.full_name]
    return int(field.type)


def string_to_json(field: FieldDescriptor, value: str, *, name: str) -> object:
    """Turns one path/query string into the proto3 JSON value json_format parses.

    json_format already accepts strings for numbers, enums (by name or number), bytes (base64),
    timestamps, durations and field masks; only booleans need converting.

    Raises:
        GatewayError: INVALID_ARGUMENT when a boolean is not spelled as one.
    """
    if scalar_type(field) == FieldDescriptor.TYPE_BOOL:
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise invalid_argument(f"{name}: {value!r} is not a boolean (true or false)", field=name)
    return value


def find_field(message: Descriptor, name: str) -> FieldDescriptor | None:
    """Finds a field by proto name or by its lowerCamelCase JSON name."""
    field = message.fields_by_name.get(name)
    if field is None:
        field = message.fields_by_camelcase_name.get(name)
    return field


def resolve_parameter(message: Descriptor, dotted: str) -> list[FieldDescriptor]:
    """Resolves a query parameter name like ``a.b_c`` or ``a.bC`` to the chain of fields.

    Raises:
        GatewayError: INVALID_ARGUMENT naming the parameter when it names no field, crosses a
            repeated or special message, or ends on a field no single string can set.
    """
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    parts = dotted.split(".")
    for position, part in enumerate(parts):
        field = find_field(current, part) if current is not None else None
        if field is None:
            raise invalid_argument(f"unknown query parameter {dotted!r}", field=dotted)
        chain.append(field)
        if position < len(parts) - 1:
            if not is_plain_message(field) or field.is_repeated:
                raise invalid_argument(
                    f"query parameter {dotted!r}: {field.name} has no sub-fields to set",
                    field=dotted,
                )
            current = field.message_type
    if not accepts_string(chain[-1]):
        raise invalid_argument(
            f"query parameter {dotted!r}: field {chain[-1].name} cannot be set from a query "
            "parameter; send it in a request body",
            field=dotted,
        )
    return chain
