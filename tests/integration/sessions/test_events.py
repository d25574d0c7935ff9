"""Appending events and reading them back: content, ids, partial events, read options."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
from google.protobuf import struct_pb2, timestamp_pb2

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


def _at(seconds_ago: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(seconds=seconds_ago))
    return stamp


def _rich_event() -> session_pb2.Event:
    json_value = struct_pb2.Value()
    json_value.struct_value.update({"rows": [1, 2, 3]})
    return session_pb2.Event(
        author="agent",
        agent_name="researcher",
        invocation_id="inv-1",
        branch="root.researcher",
        timestamp=_at(5),
        turn_complete=True,
        content=session_pb2.Content(
            role="model",
            parts=[
                session_pb2.Part(text="Looking it up", thought=True),
                session_pb2.Part(
                    function_call=session_pb2.FunctionCall(
                        id="call-1", name="search", args=struct({"q": "flights"})
                    )
                ),
                session_pb2.Part(
                    function_response=session_pb2.FunctionResponse(
                        id="call-1", name="search", response=struct({"hits": 2})
                    )
                ),
                session_pb2.Part(json=json_value),
                session_pb2.Part(
                    inline_data=session_pb2.Blob(mime_type="image/png", data=b"\x89PNG\x00")
                ),
                session_pb2.Part(
                    file_data=session_pb2.FileData(mime_type="text/csv", file_uri="gs://b/f.csv")
                ),
            ],
        ),
        actions=session_pb2.EventActions(
            state_delta=struct({"topic": "flights"}),
            tool_calls=[session_pb2.ToolCall(id="t1", name="search", args=struct({"q": "x"}))],
            tool_outputs=[session_pb2.ToolOutput(call_id="t1", name="search", output=json_value)],
            transfer_to_agent="booker",
            escalate=True,
            skip_summarization=True,
            artifact_delta={"report.pdf": 2},
        ),
        metadata=struct({"model": "m-1", "tokens": 42}),
        error_code="",
    )


async def test_every_event_field_round_trips(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    sent = _rich_event()
    stored = await append(stub, md, session.id, sent)
    assert stored.session_id == session.id
    assert stored.sequence == 1
    uuid.UUID(stored.id)
    expected = session_pb2.Event()
    expected.CopyFrom(sent)
    expected.id, expected.session_id, expected.sequence = stored.id, session.id, 1
    assert stored == expected
    fetched = await get(stub, md, session.id)
    assert list(fetched.events) == [expected]
    listed = await stub.ListEvents(
        session_service_pb2.ListEventsRequest(session_id=session.id), metadata=md
    )
    assert list(listed.events) == [expected]


async def test_agent_to_agent_messages_are_events(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md, agent_id="coordinator")
    request = await append(
        stub,
        md,
        session.id,
        session_pb2.Event(
            author="agent",
            agent_name="coordinator",
            a2a_message=session_pb2.A2AMessage(
                from_agent_id="coordinator",
                to_agent_id="researcher",
                message_type="request",
                content=struct({"task": "find flights"}),
                context=session_pb2.A2AContext(
                    session_id=session.id, user_id="u1", shared_state=struct({"budget": 300})
                ),
            ),
        ),
    )
    response = await append(
        stub,
        md,
        session.id,
        session_pb2.Event(
            author="agent",
            agent_name="researcher",
            a2a_message=session_pb2.A2AMessage(
                from_agent_id="researcher",
                to_agent_id="coordinator",
                message_type="response",
                in_reply_to=request.id,
                content=struct({"found": 3}),
            ),
        ),
    )
    note = await append(
        stub,
        md,
        session.id,
        session_pb2.Event(
            author="system",
            a2a_message=session_pb2.A2AMessage(
                from_agent_id="coordinator", to_agent_id="*", message_type="notification"
            ),
        ),
    )
    events = (await get(stub, md, session.id)).events
    assert [e.a2a_message.message_type for e in events] == ["request", "response", "notification"]
    assert events[1].a2a_message.in_reply_to == request.id
    assert [e.id for e in events] == [request.id, response.id, note.id]


async def test_server_assigns_ids_timestamps_and_a_total_order(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    before = datetime.now(UTC)
    stored = [await append(stub, md, session.id, text_event(f"m{i}")) for i in range(3)]
    assert [e.sequence for e in stored] == [1, 2, 3]
    assert len({e.id for e in stored}) == 3
    for event in stored:
        assert event.timestamp.ToDatetime(tzinfo=UTC) >= before - timedelta(seconds=1)
    fetched = await get(stub, md, session.id)
    assert fetched.event_count == 3
    assert fetched.last_event_id == stored[-1].id


async def test_append_with_the_same_id_is_idempotent(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    event_id = str(uuid.uuid4())
    first = await append(stub, md, session.id, text_event("once", id=event_id))
    retry = await append(stub, md, session.id, text_event("once", id=event_id))
    assert retry == first
    assert (await get(stub, md, session.id)).event_count == 1


async def test_partial_events_are_answered_not_stored(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md, state=struct({"n": 1}))
    chunk = session_pb2.Event(
        author="agent",
        partial=True,
        content=session_pb2.Content(parts=[session_pb2.Part(text="Hel")]),
        actions=session_pb2.EventActions(state_delta=struct({"n": 2})),
    )
    answered = await append(stub, md, session.id, chunk)
    assert answered.partial
    assert answered.session_id == session.id
    assert answered.sequence == 0
    after = await get(stub, md, session.id)
    assert after.event_count == 0
    assert not after.events
    assert as_dict(after.state) == {"n": 1}


async def test_get_selects_recent_events_or_events_after_a_time(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    stored = [
        await append(stub, md, session.id, text_event(f"m{i}", timestamp=_at(100 - i * 10)))
        for i in range(6)
    ]
    recent = await get(stub, md, session.id, num_recent_events=2)
    assert [e.id for e in recent.events] == [e.id for e in stored[-2:]]
    assert recent.event_count == 6
    after = await get(stub, md, session.id, events_after=stored[3].timestamp)
    assert [e.id for e in after.events] == [e.id for e in stored[4:]]
    both = await get(stub, md, session.id, events_after=stored[1].timestamp, num_recent_events=1)
    assert [e.id for e in both.events] == [stored[-1].id]
    none = await get(stub, md, session.id, exclude_events=True)
    assert not none.events
    zero = await get(stub, md, session.id, num_recent_events=0)
    assert not zero.events
    every = await get(stub, md, session.id)
    assert [e.sequence for e in every.events] == [1, 2, 3, 4, 5, 6]


async def _list_events(stub: Stub, md: Metadata, **fields: Any) -> list[session_pb2.Event]:
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


async def test_list_events_pages_orders_and_filters(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    plan = [
        ("user", "", "inv-1", ""),
        ("agent", "planner", "inv-1", "root"),
        ("tool", "planner", "inv-1", "root.planner"),
        ("agent", "researcher", "inv-2", "root.researcher"),
        ("system", "", "inv-2", ""),
    ]
    stored = [
        await append(
            stub,
            md,
            session.id,
            text_event(f"m{i}", author=author, agent_name=agent, invocation_id=inv, branch=branch),
        )
        for i, (author, agent, inv, branch) in enumerate(plan)
    ]
    ids = [e.id for e in stored]
    assert [e.id for e in await _list_events(stub, md, session_id=session.id, page_size=2)] == ids
    descending = await _list_events(
        stub, md, session_id=session.id, page_size=2, order_by="sequence desc"
    )
    assert [e.id for e in descending] == ids[::-1]
    cases = {
        'author = "agent"': [ids[1], ids[3]],
        "agent_name = planner": [ids[1], ids[2]],
        "invocation_id = inv-2": [ids[3], ids[4]],
        'branch = "root.*"': [ids[2], ids[3]],
        "branch = root": [ids[1]],
        f'timestamp > "{stored[2].timestamp.ToJsonString()}"': ids[3:],
        "author = tool OR author = system": [ids[2], ids[4]],
        "sequence >= 4": ids[3:],
    }
    for filter_text, expected in cases.items():
        got = await _list_events(stub, md, session_id=session.id, filter=filter_text, page_size=1)
        assert [e.id for e in got] == expected, filter_text


async def test_reads_of_a_long_session_touch_only_the_rows_they_return(
    stub: Stub, md: Metadata, tenant: str, pg: asyncpg.Connection
) -> None:
    """The newest N events and events after T are index range scans: O(N), not O(total)."""
    session = await create(stub, md)
    await append(stub, md, session.id, text_event("seed"))
    payload = await pg.fetchval(
        "SELECT payload FROM sessions.events WHERE tenant_id = $1 AND session_id = $2",
        tenant,
        uuid.UUID(session.id),
    )
    # 10,000 events written directly: the point is the shape of the reads, not the writes.
    await pg.execute(
        """
        INSERT INTO sessions.events (tenant_id, session_id, sequence, id, author, timestamp,
                                     payload)
        SELECT $1, $2, g, gen_random_uuid(), 'user',
               now() - interval '1 day' + g * interval '1 second', $3
          FROM generate_series(2, 10001) AS g
        """,
        tenant,
        uuid.UUID(session.id),
        payload,
    )
    await pg.execute(
        "UPDATE sessions.sessions SET last_sequence = 10001, event_count = 10001 "
        "WHERE tenant_id = $1 AND id = $2",
        tenant,
        uuid.UUID(session.id),
    )
    await pg.execute("ANALYZE sessions.events")
    recent = await get(stub, md, session.id, num_recent_events=100)
    assert [e.sequence for e in recent.events] == list(range(9902, 10002))

    from sessions_svc.repository import _GET_SQL

    async def rows_scanned(sql: str, *args: Any) -> int:
        """Rows the plan read from `events` (returned plus filtered out), whatever the scan."""
        # Planner choices follow table statistics, which other tests of the shared database
        # change; with sequential and bitmap scans priced out, the plan still reads all
        # 10,001 rows unless an index lets the query stop after the rows it returns.
        async with pg.transaction():
            await pg.execute("SET LOCAL enable_seqscan = off")
            await pg.execute("SET LOCAL enable_bitmapscan = off")
            plan = await pg.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
        scanned = 0

        def walk(node: dict[str, Any]) -> None:
            nonlocal scanned
            on_events = node.get("Relation Name") == "events" or str(
                node.get("Index Name", "")
            ).startswith("events_")
            if on_events and node["Node Type"] != "Bitmap Heap Scan":
                loops = int(node.get("Actual Loops", 1))
                rows = int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0))
                scanned += rows * loops
            for child in node.get("Plans", []):
                walk(child)

        walk(json.loads(plan)[0]["Plan"])
        assert scanned, plan  # the query must read events somewhere
        return scanned

    sid = uuid.UUID(session.id)
    assert await rows_scanned(_GET_SQL[True, False, True], tenant, sid, 100) == 100
    cutoff = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=9950)
    assert await rows_scanned(_GET_SQL[True, True, False], tenant, sid, cutoff) <= 52


async def test_unknown_session_is_not_found_for_event_rpcs(stub: Stub, md: Metadata) -> None:
    missing = str(uuid.uuid4())
    calls = [
        stub.AppendEvent(
            session_service_pb2.AppendEventRequest(session_id=missing, event=text_event("x")),
            metadata=md,
        ),
        stub.ListEvents(session_service_pb2.ListEventsRequest(session_id=missing), metadata=md),
        stub.GetSession(session_service_pb2.GetSessionRequest(id=missing), metadata=md),
    ]
    for call in calls:
        error = await failure(call)
        assert error.code == grpc.StatusCode.NOT_FOUND
        assert missing in error.message
