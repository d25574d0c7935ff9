"""Response JSON: proto names, int64 strings, enum names, and lists/maps always present."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2, json_format, struct_pb2
from google.protobuf.message import Message

from contextiq.sessions.v1 import session_pb2
from gateway.errors import GatewayError
from gateway.fields import is_map, plain_message
from gateway.json_output import JsonEncoder
from tests.protos.showcase import Showcase


def test_collections_are_present_at_every_level(showcase: Showcase) -> None:
    pb = showcase.module
    kitchen = pb.Kitchen(f_int64=2**60, color=pb.COLOR_GREEN)
    kitchen.nested.child.name = "c"
    kitchen.nesteds.add()
    kitchen.nested_by_number[3].name = "three"

    rendered = JsonEncoder().to_dict(kitchen)

    assert rendered == {
        "f_int64": str(2**60),
        "color": "COLOR_GREEN",
        "nested": {"child": {"name": "c"}},
        "nesteds": [{}],
        "nested_by_number": {"3": {"name": "three"}},
        "tags": [],
        "numbers": [],
        "colors": [],
        "labels": {},
    }


def test_special_json_types_are_left_alone() -> None:
    encoder = JsonEncoder()
    value = struct_pb2.Struct()
    value.update({"a": [1, None]})

    assert encoder.to_dict(value) == {"a": [1, None]}
    assert encoder.to_dict(empty_pb2.Empty()) == {}
    assert encoder.encode({"é": 1}) == '{"é":1}'.encode()


def test_response_field_defaults(showcase: Showcase) -> None:
    pb = showcase.module
    encoder = JsonEncoder()
    fields = pb.Kitchen.DESCRIPTOR.fields_by_name

    assert encoder.field_value(pb.Kitchen(), fields["tags"]) == []
    assert encoder.field_value(pb.Kitchen(), fields["labels"]) == {}
    assert encoder.field_value(pb.Kitchen(), fields["f_int64"]) == "0"
    assert encoder.field_value(pb.Kitchen(), fields["nested"]) == {}
    assert encoder.field_value(pb.Kitchen(tags=["x"]), fields["tags"]) == ["x"]


def test_unwritable_message_is_an_internal_error(showcase: Showcase) -> None:
    kitchen = showcase.module.Kitchen(mask=field_mask_pb2.FieldMask(paths=["labels.someKey"]))

    with pytest.raises(GatewayError) as raised:
        JsonEncoder().to_dict(kitchen)

    assert raised.value.code == grpc.StatusCode.INTERNAL


def _reference(message: Message) -> Any:
    """json_format's output plus the gateway's rule for empty lists and maps."""
    rendered = json_format.MessageToDict(message, preserving_proto_field_name=True)

    def fill(node: dict[str, Any], descriptor: Any) -> None:
        for field in descriptor.fields:
            if field.is_repeated and field.name not in node:
                node[field.name] = {} if is_map(field) else []
            sub = plain_message(field)
            value = node.get(field.name)
            if sub is None or value is None:
                continue
            if is_map(field):
                value_type = plain_message(field.message_type.fields_by_name["value"])
                for item in value.values() if value_type is not None else ():
                    fill(item, value_type)
            elif field.is_repeated:
                for item in value:
                    fill(item, sub)
            else:
                fill(value, sub)

    fill(rendered, message.DESCRIPTOR)
    return rendered


def test_same_output_as_json_format(showcase: Showcase) -> None:
    pb = showcase.module
    kitchen = pb.Kitchen()
    json_format.ParseDict(
        {
            "id": "k",
            "f_double": "-Infinity",
            "f_float": 0.1,
            "f_int32": -1,
            "f_int64": "-9007199254740993",
            "f_uint32": 4294967295,
            "f_uint64": "18446744073709551615",
            "f_sint32": -2,
            "f_sint64": "-3",
            "f_fixed32": 4,
            "f_fixed64": "5",
            "f_sfixed32": -6,
            "f_sfixed64": "-7",
            "f_bool": True,
            "f_string": "é",
            "f_bytes": "AAH/",
            "color": "COLOR_RED",
            "nested": {"name": "n", "child": {"count": 2, "child": {}}},
            "tags": ["a", "b"],
            "numbers": ["1", "-2"],
            "colors": ["COLOR_GREEN", 7],
            "nesteds": [{"name": "x"}, {}],
            "labels": {"k": "v"},
            "nested_by_number": {"-1": {"name": "m"}},
            "when": "2025-01-02T03:04:05.123Z",
            "ttl": "-1.5s",
            "mask": "fString,nested.name",
            "attrs": {"a": [1, 1.5, "x", None, True, {"b": []}]},
            "any_value": [1, {"z": None}],
            "choice_nested": {"count": 1},
            "maybe_int32": 0,
            "maybe_int64": "9",
            "maybe_bool": False,
            "maybe_string": "",
            "opt_int32": 0,
        },
        kitchen,
    )

    assert JsonEncoder().to_dict(kitchen) == _reference(kitchen)
    assert JsonEncoder().to_dict(pb.Kitchen()) == _reference(pb.Kitchen())


def test_same_output_for_real_resources() -> None:
    session = session_pb2.Session()
    json_format.ParseDict(
        {"id": "s", "user_id": "u", "scope": {"a": "b"}, "state": {"k": 1}, "events": [{}]},
        session,
        ignore_unknown_fields=True,
    )

    assert JsonEncoder().to_dict(session) == _reference(session)
