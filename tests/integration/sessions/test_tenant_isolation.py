"""Tenant matrix of SessionService: tenant B never reads or writes tenant A's data.

Tenant A owns a session (with an event, session state and `user:` / `app:` state). Every row of
:data:`MATRIX` is one RPC tenant B makes with A's ids, and the code B must get. Afterwards A's
session must be exactly as it was. Lists and shared state are checked separately below.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from contextiq.sessions.v1 import session_pb2, session_service_pb2
from tests.auth_helpers import bearer
from tests.integration.sessions.conftest import (
    Metadata,
    Stub,
    append,
    as_dict,
    create,
    get,
    rpc_failure,
    struct,
    text_event,
)


@dataclass(frozen=True)
class Victim:
    """Tenant A's resources."""

    session: session_pb2.Session
    event: session_pb2.Event
    md: Metadata


@dataclass(frozen=True)
class Case:
    """One RPC of tenant B against tenant A's ids."""

    rpc: str
    build: Callable[[Victim], Any]
    expected: grpc.StatusCode
    streaming: bool = False


NOT_FOUND = grpc.StatusCode.NOT_FOUND
SS = session_service_pb2

MATRIX: list[Case] = [
    Case("GetSession", lambda v: SS.GetSessionRequest(id=v.session.id), NOT_FOUND),
    Case(
        "UpdateSession",
        lambda v: SS.UpdateSessionRequest(
            session=session_pb2.Session(id=v.session.id, labels={"x": "y"})
        ),
        NOT_FOUND,
    ),
    Case("DeleteSession", lambda v: SS.DeleteSessionRequest(id=v.session.id), NOT_FOUND),
    Case(
        "AppendEvent",
        lambda v: SS.AppendEventRequest(session_id=v.session.id, event=text_event("intrude")),
        NOT_FOUND,
    ),
    Case(
        "AppendEvent",  # replaying A's event id must not reveal A's event
        lambda v: SS.AppendEventRequest(
            session_id=v.session.id, event=text_event("replay", id=v.event.id)
        ),
        NOT_FOUND,
    ),
    Case(
        "AppendEvent",  # partial events are not stored, but still need a visible session
        lambda v: SS.AppendEventRequest(
            session_id=v.session.id, event=text_event("chunk", partial=True)
        ),
        NOT_FOUND,
    ),
    Case("ListEvents", lambda v: SS.ListEventsRequest(session_id=v.session.id), NOT_FOUND),
    Case(
        "StreamEvents",
        lambda v: SS.StreamEventsRequest(session_id=v.session.id),
        NOT_FOUND,
        streaming=True,
    ),
    Case(
        "StreamEvents",
        lambda v: SS.StreamEventsRequest(session_id=v.session.id, after_event_id=v.event.id),
        NOT_FOUND,
        streaming=True,
    ),
    Case(
        "UpdateSessionState",
        lambda v: SS.UpdateSessionStateRequest(
            session_id=v.session.id,
            state=struct({"stolen": True}),
            update_mask=field_mask_pb2.FieldMask(paths=["state.stolen"]),
        ),
        NOT_FOUND,
    ),
    Case(
        "CreateSession",  # a child of A's session
        lambda v: SS.CreateSessionRequest(user_id="u1", parent_session_id=v.session.id),
        NOT_FOUND,
    ),
]


@pytest.fixture
async def victim(stub: Stub) -> Victim:
    md_a = bearer(f"tenant-a-{uuid.uuid4().hex[:8]}")
    session = await create(
        stub,
        md_a,
        user_id="u1",
        app_name="shared-app",
        state=struct({"secret": 1, "user:u": 2, "app:a": 3}),
        request_id="same-request",
        labels={"team": "a"},
    )
    event = await append(stub, md_a, session.id, text_event("hello"))
    return Victim(session=await get(stub, md_a, session.id), event=event, md=md_a)


@pytest.mark.parametrize("case", MATRIX, ids=[f"{c.rpc}-{i}" for i, c in enumerate(MATRIX)])
async def test_other_tenant_gets_the_expected_code(
    stub: Stub, md: Metadata, victim: Victim, case: Case
) -> None:
    method = getattr(stub, case.rpc)
    call = method(case.build(victim), metadata=md, timeout=10.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await (call.read() if case.streaming else call)
    failure = rpc_failure(info.value)
    assert failure.code == case.expected
    assert "secret" not in failure.message
    # A's session is untouched: same events, state, etag.
    assert await get(stub, victim.md, victim.session.id) == victim.session


async def test_lists_never_show_another_tenants_sessions(
    stub: Stub, md: Metadata, victim: Victim
) -> None:
    own = await create(stub, md, user_id="u1", app_name="shared-app", labels={"team": "a"})
    for request in (
        SS.ListSessionsRequest(),
        SS.ListSessionsRequest(user_id="u1"),
        SS.ListSessionsRequest(app_name="shared-app"),
        SS.ListSessionsRequest(filter='labels.team = "a"'),
        SS.ListSessionsRequest(parent_session_id=victim.session.id),
    ):
        listed = await stub.ListSessions(request, metadata=md)
        assert victim.session.id not in {s.id for s in listed.sessions}
    assert [
        s.id for s in (await stub.ListSessions(SS.ListSessionsRequest(), metadata=md)).sessions
    ] == [own.id]


async def test_shared_state_and_request_ids_are_per_tenant(
    stub: Stub, md: Metadata, victim: Victim
) -> None:
    # Same app, same user id, same request id as tenant A: a new, empty session of B.
    mine = await create(stub, md, user_id="u1", app_name="shared-app", request_id="same-request")
    assert mine.id != victim.session.id
    assert as_dict(mine.state) == {}
