"""Responses as proto3 JSON.

Proto field names (``user_id``), int64 as strings, enums by name, RFC 3339 timestamps: the
json_format mapping. Unpopulated scalars and messages are omitted (grpc-gateway's
``EmitUnpopulated: false``), but repeated and map fields are always present, as ``[]``/``{}``
when empty, so a client can iterate ``response["memories"]`` without a key check.

json_format's printer decides per field at run time and is the largest cost of a request; this
encoder precomputes one converter per field and message type, and produces the same output
(the unit tests compare both). Any and Empty are still printed by json_format.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

from gateway.errors import GatewayError
from gateway.fields import (
    DURATION,
    FIELD_MASK,
    LIST_VALUE,
    NULL_VALUE,
    SPECIAL_JSON_MESSAGES,
    STRUCT,
    TIMESTAMP,
    VALUE,
    WRAPPERS,
    descriptor_of,
    is_map,
    map_fields,
)

_log = logging.getLogger(__name__)

Converter = Callable[[Any], Any]

_INT64_TYPES: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
# Messages printed by their own ToJsonString (a plain string in JSON); Timestamp has a faster
# converter of its own (_timestamp) with the same output.
_STRING_MESSAGES: Final = frozenset({DURATION, FIELD_MASK})
# One encoder for every response (json.dumps with arguments builds one per call). The values
# are trees made here, never cyclic: no circular check.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_EPOCH: Final = datetime.datetime(1970, 1, 1)
# google.protobuf's valid Timestamp range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_TIMESTAMP_SECONDS_MIN: Final = -62135596800
_TIMESTAMP_SECONDS_MAX: Final = 253402300799


@dataclass(frozen=True, slots=True)
class _Plan:
    """Per message type: a converter per field number, and the collections to default."""

    converters: dict[int, Converter]
    collections: tuple[tuple[str, bool], ...]  # (name, is_map)


class JsonEncoder:
    """Encodes messages to JSON; plans per message type are computed once and kept."""

    def __init__(self) -> None:
        self._plans: dict[str, _Plan] = {}

    def to_dict(self, message: Message) -> Any:
        """The message as a JSON-ready value (a dict, unless it is a special well-known type).

        Raises:
            GatewayError: INTERNAL when the message has no JSON form (e.g. a FieldMask path
                that the JSON mapping cannot write in lowerCamelCase).
        """
        descriptor = descriptor_of(message)
        try:
            if descriptor.full_name in SPECIAL_JSON_MESSAGES:
                return _json_format(message)
            return self._message(message, descriptor)
        except (ValueError, json_format.SerializeToJsonError) as exc:
            _log.error("cannot write a %s as JSON: %s", descriptor.full_name, exc)
            raise GatewayError(
                grpc.StatusCode.INTERNAL,
                f"the service's {descriptor.name} cannot be written as JSON",
            ) from None

    def field_value(self, message: Message, field: FieldDescriptor) -> Any:
        """One field of a message as JSON (``response_body``): its default when unset."""
        rendered: dict[str, Any] = self.to_dict(message)
        if field.name in rendered:
            return rendered[field.name]
        if field.message_type is not None:
            return None if field.message_type.full_name.startswith("google.protobuf.") else {}
        return self._converter(field)(field.default_value)

    def encode(self, value: Any) -> bytes:
        """Serializes a JSON-ready value compactly."""
        return _JSON.encode(value).encode()

    def _message(self, message: Message, descriptor: Descriptor) -> dict[str, Any]:
        plan = self._plans.get(descriptor.full_name)
        if plan is None:
            plan = self._plan(descriptor)
        converters = plan.converters
        rendered: dict[str, Any] = {}
        for field, value in message.ListFields():
            converter = converters.get(field.number)
            if converter is None:  # an extension: json_format knows how to name it
                return self._with_collections(_json_format(message), plan)
            rendered[field.name] = converter(value)
        return self._with_collections(rendered, plan)

    @staticmethod
    def _with_collections(rendered: dict[str, Any], plan: _Plan) -> dict[str, Any]:
        for name, map_field in plan.collections:
            if name not in rendered:
                rendered[name] = {} if map_field else []
        return rendered

    def _plan(self, descriptor: Descriptor) -> _Plan:
        # Message-typed fields convert through self._message, which finds their plan when
        # called: recursive types need nothing special here.
        collections = tuple(
            (field.name, is_map(field)) for field in descriptor.fields if field.is_repeated
        )
        plan = _Plan(
            converters={field.number: self._converter(field) for field in descriptor.fields},
            collections=collections,
        )
        self._plans[descriptor.full_name] = plan
        return plan

    def _converter(self, field: FieldDescriptor) -> Converter:
        if is_map(field):
            key_field, value_field = map_fields(field)
            value = self._element(value_field)
            # Keys, then a lookup each: a map's items() is a Python-level ItemsView generator.
            if key_field.type == FieldDescriptor.TYPE_STRING:
                return lambda entries: {k: value(entries[k]) for k in entries}
            key = _map_key if key_field.type == FieldDescriptor.TYPE_BOOL else str
            return lambda entries: {key(k): value(entries[k]) for k in entries}
        element = self._element(field)
        if field.is_repeated:
            return lambda items: [element(item) for item in items]
        return element

    def _element(self, field: FieldDescriptor) -> Converter:
        message = field.message_type
        if message is not None:
            return self._message_converter(message)
        if field.enum_type is not None:
            if field.enum_type.full_name == NULL_VALUE:
                return lambda _: None
            names = {value.number: value.name for value in field.enum_type.values}
            return lambda number: names.get(number, number)
        return _scalar(field.type)

    def _message_converter(self, message: Descriptor) -> Converter:
        name = message.full_name
        if name == TIMESTAMP:
            return _timestamp
        if name in _STRING_MESSAGES:
            return _to_json_string
        wrapped = WRAPPERS.get(name)
        if wrapped is not None:
            scalar = _scalar(wrapped)
            return lambda wrapper: scalar(wrapper.value)
        if name == STRUCT:
            return _struct
        if name == VALUE:
            return _value
        if name == LIST_VALUE:
            return _list_value
        if name in SPECIAL_JSON_MESSAGES:
            return _json_format
        return lambda value: self._message(value, message)


def _scalar(field_type: int) -> Converter:
    if field_type in _INT64_TYPES:
        return str
    if field_type == FieldDescriptor.TYPE_DOUBLE:
        return _double
    if field_type == FieldDescriptor.TYPE_FLOAT:
        return _float
    if field_type == FieldDescriptor.TYPE_BYTES:
        return _bytes
    return _identity


def _identity(value: Any) -> Any:
    return value


def _double(value: float) -> float | str:
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if math.isnan(value):
        return "NaN"
    return value


def _float(value: float) -> float | str:
    special = _double(value)
    return special if isinstance(special, str) else type_checkers.ToShortestFloat(value)


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _map_key(key: bool) -> str:
    return "true" if key else "false"


def _to_json_string(value: Any) -> str:
    text: str = value.ToJsonString()
    return text


def _timestamp(value: Any) -> str:
    """Timestamp.ToJsonString's RFC 3339 text (3, 6 or 9 fractional digits, as needed)."""
    seconds: int = value.seconds
    nanos: int = value.nanos
    if not (
        _TIMESTAMP_SECONDS_MIN <= seconds <= _TIMESTAMP_SECONDS_MAX and 0 <= nanos < 1_000_000_000
    ):
        return _to_json_string(value)  # raises protobuf's own ValueError
    text = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _struct(struct: Any) -> dict[str, Any]:
    fields = struct.fields
    return {key: _value(fields[key]) for key in fields}


def _list_value(values: Any) -> list[Any]:
    return [_value(value) for value in values.values]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "struct_value":
        return _struct(value.struct_value)
    if kind == "list_value":
        return _list_value(value.list_value)
    if kind == "number_value":
        number: float = value.number_value
        if not math.isfinite(number):
            # json_format refuses too: the JSON would read back as a string_value.
            raise ValueError("a google.protobuf.Value holds a non-finite number")
        return number
    return getattr(value, kind)


def _json_format(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
