"""Request validation and conversions of the sessions service (no database)."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from ciq_runtime.errors import InvalidArgument
from contextiq.sessions.v1 import session_pb2, session_service_pb2
from sessions_svc import validation
from sessions_svc.convert import new_id, parse_etag, struct_to_dict, to_etag


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def test_append_fills_in_id_and_timestamp_and_strips_temp_keys() -> None:
    request = session_service_pb2.AppendEventRequest(
        session_id=str(uuid.uuid4()),
        event=session_pb2.Event(
            author="agent",
            sequence=7,
            session_id="forged",
            actions=session_pb2.EventActions(state_delta=_struct({"a": 1, "temp:t": 2})),
        ),
    )
    new = validation.append_event(request, max_event_bytes=1 << 20)
    assert new.event_id.version == 7
    assert not new.client_id
    assert new.event.id == str(new.event_id)
    assert new.event.HasField("timestamp")
    assert new.event.sequence == 0
    assert new.event.session_id == ""
    assert dict(new.event.actions.state_delta.fields.items()).keys() == {"a"}
    assert session_pb2.Event.FromString(new.payload) == new.event
    assert new.delta.session.set == {"a": 1}


def test_partial_events_have_no_payload() -> None:
    request = session_service_pb2.AppendEventRequest(
        session_id=str(uuid.uuid4()), event=session_pb2.Event(author="agent", partial=True)
    )
    new = validation.append_event(request, max_event_bytes=1 << 20)
    assert new.partial
    assert new.payload == b""
    assert not new.event.partial


def test_the_event_size_limit_is_configurable() -> None:
    request = session_service_pb2.AppendEventRequest(
        session_id=str(uuid.uuid4()),
        event=session_pb2.Event(
            author="user",
            content=session_pb2.Content(parts=[session_pb2.Part(text="x" * 200)]),
        ),
    )
    validation.append_event(request, max_event_bytes=1024)
    with pytest.raises(InvalidArgument) as info:
        validation.append_event(request, max_event_bytes=100)
    assert info.value.field == "event"
    assert info.value.metadata["limit_bytes"] == "100"


def test_state_update_mask_semantics() -> None:
    request = session_service_pb2.UpdateSessionStateRequest(
        session_id=str(uuid.uuid4()),
        state=_struct({"a": 1, "b": 2, "user:c": 3}),
        update_mask=field_mask_pb2.FieldMask(paths=["state.a", "state.user:c", "state.gone"]),
        etag="12",
    )
    update = validation.state_update(request)
    assert update.delta.session.set == {"a": 1}
    assert update.delta.session.delete == ["gone"]
    assert update.delta.user.set == {"c": 3}
    assert update.expected_version == 12


def test_foreign_etags_match_nothing() -> None:
    assert validation.expected_version("") is None
    assert validation.expected_version('W/"x"') == -1
    assert parse_etag(to_etag(41)) == 41


def test_struct_conversion_keeps_ints_and_rejects_what_json_cannot_store() -> None:
    assert struct_to_dict(_struct({"n": 3, "f": 1.5, "l": [1, None]}), field="s") == {
        "n": 3,
        "f": 1.5,
        "l": [1, None],
    }
    bad = struct_pb2.Struct()
    bad.fields["x"].number_value = math.inf
    with pytest.raises(InvalidArgument):
        struct_to_dict(bad, field="state")


def test_new_ids_are_time_ordered_uuid7() -> None:
    ids = [new_id() for _ in range(50)]
    assert all(i.version == 7 for i in ids)
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)
