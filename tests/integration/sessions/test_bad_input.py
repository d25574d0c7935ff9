"""Bad input: INVALID_ARGUMENT naming the field, and nothing written."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

from contextiq.sessions.v1 import session_pb2, session_service_pb2
from sessions_svc.validation import DEFAULT_MAX_EVENT_BYTES
from tests.integration.sessions.conftest import (
    Metadata,
    Stub,
    as_dict,
    create,
    failure,
    get,
    struct,
    text_event,
)


def _nan_struct() -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.fields["x"].number_value = math.nan
    return value


def _past() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromSeconds(1_000_000)
    return stamp


BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("missing user", {"user_id": ""}, "user_id"),
    ("six scope pairs", {"scope": {f"k{i}": "v" for i in range(6)}}, "scope"),
    ("empty scope value", {"scope": {"project": ""}}, "scope"),
    ("bad scope key", {"scope": {"has space": "v"}}, "scope"),
    ("empty state key", {"state": struct({"": 1})}, "state"),
    ("bare prefix key", {"state": struct({"app:": 1})}, "state"),
    ("NaN in state", {"state": _nan_struct()}, "state"),
    ("NUL in state", {"state": struct({"a": "x\x00y"})}, "state"),
    ("bad label key", {"labels": {"-x": "1"}}, "labels"),
    ("parent not a uuid", {"parent_session_id": "nope"}, "parent_session_id"),
    ("session id not a uuid", {"session_id": "nope"}, "session_id"),
    ("negative ttl", {"ttl": duration_pb2.Duration(seconds=-5)}, "ttl"),
    ("expiry in the past", {"expires_at": _past()}, "expires_at"),
]


@pytest.mark.parametrize(("name", "fields", "field"), BAD_CREATES, ids=[c[0] for c in BAD_CREATES])
async def test_bad_create_names_the_field_and_writes_nothing(
    stub: Stub, md: Metadata, name: str, fields: dict[str, Any], field: str
) -> None:
    fields = {"user_id": "u1", "app_name": "app", **fields}
    fields.setdefault("request_id", "req")
    error = await failure(create(stub, md, **fields))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == field
    assert error.metadata["field"] == field
    listed = await stub.ListSessions(session_service_pb2.ListSessionsRequest(), metadata=md)
    assert not listed.sessions


def _event(**fields: Any) -> session_pb2.Event:
    return session_pb2.Event(**{"author": "agent", **fields})


def _part(**fields: Any) -> session_pb2.Content:
    return session_pb2.Content(parts=[session_pb2.Part(**fields)])


BAD_APPENDS: list[tuple[str, dict[str, Any], str]] = [
    ("no event", {"event": None}, "event"),
    ("unknown author", {"event": _event(author="robot")}, "event.author"),
    ("empty author", {"event": _event(author="")}, "event.author"),
    (
        "oversized event",
        {"event": text_event("x" * (DEFAULT_MAX_EVENT_BYTES + 1))},
        "event",
    ),
    (
        "empty delta key",
        {"event": _event(actions=session_pb2.EventActions(state_delta=struct({"": 1})))},
        "event.actions.state_delta",
    ),
    (
        "bare prefix in delta",
        {"event": _event(actions=session_pb2.EventActions(state_delta=struct({"user:": 1})))},
        "event.actions.state_delta",
    ),
    (
        "NaN in delta",
        {"event": _event(actions=session_pb2.EventActions(state_delta=_nan_struct()))},
        "event.actions.state_delta",
    ),
    ("event id not a uuid", {"event": _event(id="e-1")}, "event.id"),
    ("expected id not a uuid", {"expected_last_event_id": "x"}, "expected_last_event_id"),
    (
        "unknown a2a type",
        {
            "event": _event(
                a2a_message=session_pb2.A2AMessage(
                    from_agent_id="a", to_agent_id="b", message_type="gossip"
                )
            )
        },
        "event.a2a_message.message_type",
    ),
    (
        "a2a without sender",
        {
            "event": _event(
                a2a_message=session_pb2.A2AMessage(to_agent_id="b", message_type="request")
            )
        },
        "event.a2a_message.from_agent_id",
    ),
    (
        "function call without name",
        {"event": _event(content=_part(function_call=session_pb2.FunctionCall()))},
        "event.content.parts[0].function_call.name",
    ),
    (
        "tool call without name",
        {"event": _event(actions=session_pb2.EventActions(tool_calls=[session_pb2.ToolCall()]))},
        "event.actions.tool_calls[0].name",
    ),
    ("NUL in branch", {"event": _event(branch="a\x00b")}, "event.branch"),
]


@pytest.mark.parametrize(("name", "fields", "field"), BAD_APPENDS, ids=[c[0] for c in BAD_APPENDS])
async def test_bad_append_names_the_field_and_writes_nothing(
    stub: Stub, md: Metadata, name: str, fields: dict[str, Any], field: str
) -> None:
    session = await create(stub, md, app_name="app", state=struct({"a": 1}))
    request = session_service_pb2.AppendEventRequest(
        session_id=session.id,
        event=_event(
            actions=session_pb2.EventActions(state_delta=struct({"a": 2, "user:b": 1, "app:c": 1}))
        ),
    )
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)  # type: ignore[arg-type]
        elif isinstance(value, str):
            setattr(request, key, value)
        else:
            getattr(request, key).CopyFrom(value)
    error = await failure(stub.AppendEvent(request, metadata=md))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == field
    after = await get(stub, md, session.id)
    assert after.event_count == 0
    assert as_dict(after.state) == {"a": 1}


async def test_other_bad_requests_name_their_field(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md, state=struct({"a": 1}))
    cases: list[tuple[Any, str]] = [
        (
            stub.GetSession(
                session_service_pb2.GetSessionRequest(id=session.id, num_recent_events=-1),
                metadata=md,
            ),
            "num_recent_events",
        ),
        (stub.GetSession(session_service_pb2.GetSessionRequest(id="x"), metadata=md), "id"),
        (
            stub.ListSessions(
                session_service_pb2.ListSessionsRequest(filter="colour = red"), metadata=md
            ),
            "filter",
        ),
        (
            stub.ListSessions(
                session_service_pb2.ListSessionsRequest(filter='user_id = "a" AND'), metadata=md
            ),
            "filter",
        ),
        (
            stub.ListSessions(session_service_pb2.ListSessionsRequest(page_size=-1), metadata=md),
            "page_size",
        ),
        (
            stub.ListSessions(
                session_service_pb2.ListSessionsRequest(order_by="user_id"), metadata=md
            ),
            "order_by",
        ),
        (
            stub.ListEvents(
                session_service_pb2.ListEventsRequest(session_id=session.id, filter="foo = 1"),
                metadata=md,
            ),
            "filter",
        ),
        (
            stub.UpdateSessionState(
                session_service_pb2.UpdateSessionStateRequest(
                    session_id=session.id,
                    state=struct({"a": 2}),
                    update_mask=field_mask_pb2.FieldMask(paths=["metadata"]),
                ),
                metadata=md,
            ),
            "update_mask",
        ),
        (
            stub.UpdateSessionState(
                session_service_pb2.UpdateSessionStateRequest(
                    session_id=session.id, state=struct({"temp:": 2})
                ),
                metadata=md,
            ),
            "state",
        ),
        (
            stub.UpdateSession(
                session_service_pb2.UpdateSessionRequest(
                    session=session_pb2.Session(id=session.id, user_id="other"),
                    update_mask=field_mask_pb2.FieldMask(paths=["user_id"]),
                ),
                metadata=md,
            ),
            "update_mask",
        ),
    ]
    for call, field in cases:
        error = await failure(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert error.field == field
    assert as_dict((await get(stub, md, session.id)).state) == {"a": 1}
