"""ListEvents resuming after an event: what a reader (the generation worker) uses to read only
the events it has not processed yet."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from contextiq.sessions.v1 import session_pb2, session_service_pb2
from tests.integration.sessions.conftest import Metadata, Stub, append, create, failure, text_event


async def _list(stub: Stub, md: Metadata, **fields: Any) -> list[session_pb2.Event]:
    events: list[session_pb2.Event] = []
    token = ""
    while True:
        page = await stub.ListEvents(
            session_service_pb2.ListEventsRequest(page_token=token, **fields), metadata=md
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def _session_with_events(stub: Stub, md: Metadata, count: int) -> tuple[str, list[str]]:
    session = await create(stub, md)
    ids = [(await append(stub, md, session.id, text_event(f"turn {i}"))).id for i in range(count)]
    return session.id, ids


async def test_only_events_after_the_given_one_in_sequence_order(stub: Stub, md: Metadata) -> None:
    session_id, ids = await _session_with_events(stub, md, 7)
    after = await _list(stub, md, session_id=session_id, after_event_id=ids[2], page_size=2)
    assert [e.id for e in after] == ids[3:]
    assert [e.sequence for e in after] == [4, 5, 6, 7]
    explicit = await _list(
        stub, md, session_id=session_id, after_event_id=ids[2], order_by="sequence asc"
    )
    assert [e.id for e in explicit] == ids[3:]
    last = await _list(stub, md, session_id=session_id, after_event_id=ids[-1])
    assert last == []


async def test_after_event_combines_with_filters(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    ids = []
    for i, author in enumerate(["user", "agent", "user", "agent", "user"]):
        ids.append((await append(stub, md, session.id, text_event(f"t{i}", author=author))).id)
    after = await _list(
        stub, md, session_id=session.id, after_event_id=ids[1], filter='author = "user"'
    )
    assert [e.id for e in after] == [ids[2], ids[4]]


async def test_a_page_token_belongs_to_its_resume_point(stub: Stub, md: Metadata) -> None:
    session_id, ids = await _session_with_events(stub, md, 5)
    first = await stub.ListEvents(
        session_service_pb2.ListEventsRequest(
            session_id=session_id, after_event_id=ids[0], page_size=1
        ),
        metadata=md,
    )
    assert [e.id for e in first.events] == [ids[1]]
    moved = await failure(
        stub.ListEvents(
            session_service_pb2.ListEventsRequest(
                session_id=session_id,
                after_event_id=ids[2],
                page_size=1,
                page_token=first.next_page_token,
            ),
            metadata=md,
        )
    )
    assert moved.code == grpc.StatusCode.INVALID_ARGUMENT
    assert moved.field == "page_token"


async def test_descending_order_is_refused(stub: Stub, md: Metadata) -> None:
    session_id, ids = await _session_with_events(stub, md, 2)
    refused = await failure(
        stub.ListEvents(
            session_service_pb2.ListEventsRequest(
                session_id=session_id, after_event_id=ids[0], order_by="sequence desc"
            ),
            metadata=md,
        )
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.field == "after_event_id"


async def test_unknown_or_foreign_event_is_not_found(stub: Stub, md: Metadata) -> None:
    session_id, _ = await _session_with_events(stub, md, 2)
    _, other_ids = await _session_with_events(stub, md, 1)
    for event_id in (str(uuid.uuid4()), other_ids[0]):
        missing = await failure(
            stub.ListEvents(
                session_service_pb2.ListEventsRequest(
                    session_id=session_id, after_event_id=event_id
                ),
                metadata=md,
            )
        )
        assert missing.code == grpc.StatusCode.NOT_FOUND
        assert event_id in missing.message
    malformed = await failure(
        stub.ListEvents(
            session_service_pb2.ListEventsRequest(session_id=session_id, after_event_id="nope"),
            metadata=md,
        )
    )
    assert malformed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.field == "after_event_id"


async def test_unknown_session_is_not_found_before_the_event(stub: Stub, md: Metadata) -> None:
    missing = await failure(
        stub.ListEvents(
            session_service_pb2.ListEventsRequest(
                session_id=str(uuid.uuid4()), after_event_id=str(uuid.uuid4())
            ),
            metadata=md,
        )
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert "session" in missing.message
