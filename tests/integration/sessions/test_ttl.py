"""TTL: an expired session is invisible at once, and the sweeper purges it with its events."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
from google.protobuf import duration_pb2

from contextiq.sessions.v1 import session_service_pb2
from tests.integration.sessions.conftest import (
    Metadata,
    Stub,
    append,
    create,
    failure,
    get,
    start_server,
    stop_server,
    text_event,
)


async def _rows(pg: asyncpg.Connection, tenant: str, session_id: str) -> tuple[int, int]:
    sid = uuid.UUID(session_id)
    sessions = await pg.fetchval(
        "SELECT count(*) FROM sessions.sessions WHERE tenant_id = $1 AND id = $2", tenant, sid
    )
    events = await pg.fetchval(
        "SELECT count(*) FROM sessions.events WHERE tenant_id = $1 AND session_id = $2",
        tenant,
        sid,
    )
    return int(sessions), int(events)


async def test_expired_session_is_invisible_before_it_is_purged(
    stub: Stub, md: Metadata, tenant: str, pg: asyncpg.Connection
) -> None:
    session = await create(stub, md, ttl=duration_pb2.Duration(seconds=3600), request_id="r")
    await append(stub, md, session.id, text_event("hello"))
    # Move the expiry into the past (the main server sweeps only hourly).
    await pg.execute(
        "UPDATE sessions.sessions SET expires_at = now() - interval '1 second' "
        "WHERE tenant_id = $1 AND id = $2",
        tenant,
        uuid.UUID(session.id),
    )
    calls = {
        "get": get(stub, md, session.id),
        "append": append(stub, md, session.id, text_event("late")),
        "events": stub.ListEvents(
            session_service_pb2.ListEventsRequest(session_id=session.id), metadata=md
        ),
        "delete": stub.DeleteSession(
            session_service_pb2.DeleteSessionRequest(id=session.id), metadata=md
        ),
    }
    for name, call in calls.items():
        assert (await failure(call)).code == grpc.StatusCode.NOT_FOUND, name
    listed = await stub.ListSessions(session_service_pb2.ListSessionsRequest(), metadata=md)
    assert not listed.sessions
    assert await _rows(pg, tenant, session.id) == (1, 1)  # still stored, just invisible
    # Its request_id is free again: a retry creates a new session instead of the expired one.
    again = await create(stub, md, request_id="r")
    assert again.id != session.id


async def test_sweeper_purges_expired_sessions_with_their_events(
    pg_url: str, md: Metadata, tenant: str, pg: asyncpg.Connection
) -> None:
    running = await start_server(pg_url, sweep_interval_s=0.1, sweep_batch_size=2)
    try:
        stub = running.stub
        doomed = []
        for ttl in [duration_pb2.Duration(seconds=1)] * 5 + [duration_pb2.Duration(seconds=3600)]:
            session = await create(stub, md, ttl=ttl)
            await append(stub, md, session.id, text_event("e1"))
            await append(stub, md, session.id, text_event("e2"))
            doomed.append(session)
        kept = doomed.pop()
        async with asyncio.timeout(15.0):
            for session in doomed:
                # Purged by the background sweeper, in batches of 2.
                while await _rows(pg, tenant, session.id) != (0, 0):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        assert await _rows(pg, tenant, kept.id) == (1, 2)
        assert (await get(stub, md, kept.id)).event_count == 2
    finally:
        await stop_server(running)
