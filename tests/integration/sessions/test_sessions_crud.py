"""Create / Get / List / Update / Delete sessions over gRPC."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from contextiq.sessions.v1 import session_pb2, session_service_pb2
from tests.integration.sessions.conftest import (
    Metadata,
    Stub,
    append,
    as_dict,
    create,
    failure,
    get,
    struct,
    text_event,
)


async def _list(
    stub: Stub, md: Metadata, **fields: object
) -> session_service_pb2.ListSessionsResponse:
    request = session_service_pb2.ListSessionsRequest(**fields)  # type: ignore[arg-type]
    response: session_service_pb2.ListSessionsResponse = await stub.ListSessions(
        request, metadata=md
    )
    return response


async def test_create_then_get_returns_every_field(stub: Stub, md: Metadata) -> None:
    parent = await create(stub, md, user_id="u1")
    created = await create(
        stub,
        md,
        user_id="u1",
        agent_id="coordinator",
        app_name="travel",
        scope={"user_id": "u1", "project": "alpha"},
        state=struct({"step": 1, "prefs": {"seat": "window"}}),
        metadata=struct({"source": "test"}),
        labels={"team": "support"},
        parent_session_id=parent.id,
        ttl=duration_pb2.Duration(seconds=3600),
    )
    uuid.UUID(created.id)
    fetched = await get(stub, md, created.id)
    for session in (created, fetched):
        assert session.user_id == "u1"
        assert session.agent_id == "coordinator"
        assert session.app_name == "travel"
        assert dict(session.scope) == {"user_id": "u1", "project": "alpha"}
        assert as_dict(session.state) == {"step": 1, "prefs": {"seat": "window"}}
        assert as_dict(session.metadata) == {"source": "test"}
        assert dict(session.labels) == {"team": "support"}
        assert session.parent_session_id == parent.id
        assert session.event_count == 0
        assert session.etag
        # ttl is input only: the output carries the absolute expiration.
        assert session.WhichOneof("expiration") == "expires_at"
        expires = session.expires_at.ToDatetime(tzinfo=UTC)
        assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert fetched.created_at == created.created_at


async def test_expires_at_is_kept_as_given(stub: Stub, md: Metadata) -> None:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(datetime(2100, 1, 1, tzinfo=UTC))
    session = await create(stub, md, expires_at=when)
    assert (await get(stub, md, session.id)).expires_at == when


async def test_retried_create_returns_the_same_session(stub: Stub, md: Metadata) -> None:
    first = await create(stub, md, request_id="req-1", state=struct({"a": 1}))
    again = await create(stub, md, request_id="req-1", state=struct({"a": 2}))
    assert again.id == first.id
    assert as_dict(again.state) == {"a": 1}
    assert len((await _list(stub, md)).sessions) == 1


async def test_concurrent_retries_create_one_session(stub: Stub, md: Metadata) -> None:
    results = await asyncio.gather(
        *(create(stub, md, request_id="req-race", state=struct({"user:n": 1})) for _ in range(16))
    )
    assert len({session.id for session in results}) == 1
    assert len((await _list(stub, md)).sessions) == 1


async def test_client_chosen_id_is_used_and_unique(stub: Stub, md: Metadata) -> None:
    chosen = str(uuid.uuid4())
    session = await create(stub, md, session_id=chosen)
    assert session.id == chosen
    error = await failure(create(stub, md, session_id=chosen))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS


async def test_hierarchical_sessions_list_by_parent(stub: Stub, md: Metadata) -> None:
    coordinator = await create(stub, md, agent_id="coordinator")
    children = [
        await create(stub, md, agent_id=f"worker-{i}", parent_session_id=coordinator.id)
        for i in range(3)
    ]
    await create(stub, md, agent_id="unrelated")
    by_field = await _list(stub, md, parent_session_id=coordinator.id)
    by_filter = await _list(stub, md, filter=f'parent_session_id = "{coordinator.id}"')
    expected = {child.id for child in children}
    assert {s.id for s in by_field.sessions} == expected
    assert {s.id for s in by_filter.sessions} == expected


async def test_unknown_parent_is_not_found(stub: Stub, md: Metadata) -> None:
    error = await failure(create(stub, md, parent_session_id=str(uuid.uuid4())))
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert not (await _list(stub, md)).sessions


async def test_list_filters_by_user_agent_app_scope_labels_and_time(
    stub: Stub, md: Metadata
) -> None:
    a = await create(
        stub, md, user_id="alice", agent_id="x", app_name="a1", scope={"project": "p1"}
    )
    b = await create(stub, md, user_id="bob", agent_id="y", app_name="a1", labels={"team": "t"})
    c = await create(stub, md, user_id="bob", agent_id="x", app_name="a2", scope={"project": "p2"})
    cases: list[tuple[dict[str, object], set[str]]] = [
        ({"user_id": "bob"}, {b.id, c.id}),
        ({"agent_id": "x"}, {a.id, c.id}),
        ({"app_name": "a1"}, {a.id, b.id}),
        ({"user_id": "bob", "app_name": "a2"}, {c.id}),
        ({"filter": 'scope.project = "p1"'}, {a.id}),
        ({"filter": "scope:project"}, {a.id, c.id}),
        ({"filter": "labels.team = t"}, {b.id}),
        ({"filter": 'user_id = "bob" AND NOT agent_id = "y"'}, {c.id}),
        ({"filter": "agent_id = x OR app_name = a2"}, {a.id, c.id}),
        ({"filter": f'created_at > "{b.created_at.ToJsonString()}"'}, {c.id}),
        ({"filter": f'created_at <= "{b.created_at.ToJsonString()}"'}, {a.id, b.id}),
    ]
    for fields, expected in cases:
        got = {s.id for s in (await _list(stub, md, **fields)).sessions}
        assert got == expected, fields


async def test_list_is_newest_first_paginated_and_without_events(stub: Stub, md: Metadata) -> None:
    created = [await create(stub, md) for _ in range(5)]
    await append(stub, md, created[0].id, text_event("hi"))
    seen: list[session_pb2.Session] = []
    token = ""
    while True:
        page = await _list(stub, md, page_size=2, page_token=token)
        assert len(page.sessions) <= 2
        seen.extend(page.sessions)
        token = page.next_page_token
        if not token:
            break
    assert [s.id for s in seen] == [s.id for s in reversed(created)]
    assert all(not s.events for s in seen)
    assert seen[-1].event_count == 1
    ascending = await _list(stub, md, order_by="created_at asc")
    assert [s.id for s in ascending.sessions] == [s.id for s in created]


async def test_page_token_is_bound_to_its_filter(stub: Stub, md: Metadata) -> None:
    for _ in range(3):
        await create(stub, md, user_id="u1")
    page = await _list(stub, md, page_size=1, user_id="u1")
    error = await failure(
        _list(stub, md, page_size=1, user_id="u2", page_token=page.next_page_token)
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "page_token"


async def test_update_metadata_labels_and_expiration_with_etag(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md, labels={"a": "1"}, metadata=struct({"k": "v"}))
    patch = session_pb2.Session(
        id=session.id, labels={"b": "2"}, ttl=duration_pb2.Duration(seconds=600)
    )
    request = session_service_pb2.UpdateSessionRequest(
        session=patch,
        update_mask=field_mask_pb2.FieldMask(paths=["labels", "ttl"]),
        etag=session.etag,
    )
    updated: session_pb2.Session = await stub.UpdateSession(request, metadata=md)
    assert dict(updated.labels) == {"b": "2"}
    assert as_dict(updated.metadata) == {"k": "v"}  # not in the mask
    assert updated.HasField("expires_at")
    assert updated.etag != session.etag
    stale = await failure(stub.UpdateSession(request, metadata=md))
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.metadata["current_etag"] == updated.etag
    cleared: session_pb2.Session = await stub.UpdateSession(
        session_service_pb2.UpdateSessionRequest(
            session=session_pb2.Session(id=session.id),
            update_mask=field_mask_pb2.FieldMask(paths=["expires_at"]),
        ),
        metadata=md,
    )
    assert not cleared.HasField("expires_at")


async def test_delete_reports_what_it_removed(stub: Stub, md: Metadata) -> None:
    session = await create(
        stub, md, app_name="app", state=struct({"a": 1, "b": 2, "user:u": 3, "app:x": 4})
    )
    for i in range(3):
        await append(stub, md, session.id, text_event(f"m{i}"))
    deleted: session_service_pb2.DeleteSessionResponse = await stub.DeleteSession(
        session_service_pb2.DeleteSessionRequest(id=session.id), metadata=md
    )
    assert deleted.id == session.id
    assert deleted.deleted_event_count == 3
    assert deleted.deleted_state_key_count == 2  # session-level keys; user:/app: are shared
    assert (await failure(get(stub, md, session.id))).code == grpc.StatusCode.NOT_FOUND
    events = stub.ListEvents(
        session_service_pb2.ListEventsRequest(session_id=session.id), metadata=md
    )
    assert (await failure(events)).code == grpc.StatusCode.NOT_FOUND
    # Shared state outlives the session.
    sibling = await create(stub, md, app_name="app")
    assert as_dict(sibling.state) == {"user:u": 3, "app:x": 4}
    again = stub.DeleteSession(session_service_pb2.DeleteSessionRequest(id=session.id), metadata=md)
    assert (await failure(again)).code == grpc.StatusCode.NOT_FOUND


async def test_delete_with_a_stale_etag_is_aborted(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    await append(stub, md, session.id, text_event("moves the etag"))
    error = await failure(
        stub.DeleteSession(
            session_service_pb2.DeleteSessionRequest(id=session.id, etag=session.etag),
            metadata=md,
        )
    )
    assert error.code == grpc.StatusCode.ABORTED
    assert (await get(stub, md, session.id)).event_count == 1
