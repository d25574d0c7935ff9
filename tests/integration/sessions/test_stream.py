"""StreamEvents: replay after an event id, then follow live, across replicas, and end cleanly."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from contextiq.sessions.v1 import session_pb2, session_service_pb2
from tests.integration.sessions.conftest import (
    Metadata,
    SessionsServer,
    Stub,
    append,
    create,
    failure,
    start_server,
    stop_server,
    text_event,
)

DEADLINE_S = 10.0


@pytest.fixture(scope="module")
async def replica(pg_url: str) -> AsyncIterator[SessionsServer]:
    """A second server on the same database: another replica of the service."""
    running = await start_server(pg_url, sweep_interval_s=3600.0, stream_poll_interval_s=30.0)
    try:
        yield running
    finally:
        await stop_server(running)


def _stream(stub: Stub, md: Metadata, session_id: str, after: str = "") -> grpc.aio.Call:
    request = session_service_pb2.StreamEventsRequest(session_id=session_id, after_event_id=after)
    call: grpc.aio.Call = stub.StreamEvents(request, metadata=md, timeout=30.0)
    return call


async def _take(call: grpc.aio.Call, count: int) -> list[session_pb2.Event]:
    received: list[session_pb2.Event] = []
    async with asyncio.timeout(DEADLINE_S):
        while len(received) < count:
            received.append(await call.read())
    return received


async def test_replays_after_an_event_then_follows(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    first = [await append(stub, md, session.id, text_event(f"old{i}")) for i in range(3)]
    call = _stream(stub, md, session.id, after=first[0].id)
    replayed = await _take(call, 2)
    assert [e.id for e in replayed] == [e.id for e in first[1:]]
    live = [await append(stub, md, session.id, text_event(f"new{i}")) for i in range(3)]
    followed = await _take(call, 3)
    assert followed == live
    call.cancel()


async def test_concurrent_writers_are_streamed_in_order_without_gaps(
    stub: Stub, md: Metadata
) -> None:
    session = await create(stub, md)
    head = await append(stub, md, session.id, text_event("head"))
    calls = [_stream(stub, md, session.id, after=head.id) for _ in range(2)]

    async def writer(w: int) -> None:
        for i in range(15):
            await append(stub, md, session.id, text_event(f"{w}-{i}", author="agent"))

    writing = asyncio.gather(*map(writer, range(6)))
    for call in calls:
        received = await _take(call, 90)
        assert [e.sequence for e in received] == list(range(2, 92))
        call.cancel()
    await writing


async def test_a_stream_without_position_starts_with_the_next_event(
    stub: Stub, md: Metadata
) -> None:
    session = await create(stub, md)
    await append(stub, md, session.id, text_event("before the stream"))
    call = _stream(stub, md, session.id)
    # The stream's start is not observable: keep appending until the first event arrives.
    first = asyncio.ensure_future(call.read())
    appended: list[session_pb2.Event] = []
    deadline = time.monotonic() + DEADLINE_S
    while not first.done() and time.monotonic() < deadline:
        appended.append(await append(stub, md, session.id, text_event("tick")))
        await asyncio.wait([first], timeout=0.05)
    got = await first
    assert got.sequence >= 2  # never the event appended before the stream
    rest = await _take(call, appended[-1].sequence - got.sequence)
    assert [e.sequence for e in [got, *rest]] == list(
        range(got.sequence, appended[-1].sequence + 1)
    )
    call.cancel()


async def test_events_appended_on_another_replica_are_streamed(
    stub: Stub, md: Metadata, replica: SessionsServer
) -> None:
    session = await create(stub, md)
    head = await append(stub, md, session.id, text_event("head"))
    call = _stream(replica.stub, md, session.id, after=head.id)
    # Once this event has arrived the replica's follower is idle, waiting for a hint; it
    # polls only every 30 s, so delivery of the next ones within the deadline is NOTIFY's.
    warm = await append(stub, md, session.id, text_event("warm-up"))
    assert (await _take(call, 1))[0].id == warm.id
    appended = [await append(stub, md, session.id, text_event(f"m{i}")) for i in range(3)]
    assert await _take(call, 3) == appended
    call.cancel()


async def test_delete_ends_the_stream_with_not_found(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    head = await append(stub, md, session.id, text_event("head"))
    call = _stream(stub, md, session.id, after=head.id)
    nxt = await append(stub, md, session.id, text_event("next"))
    assert (await _take(call, 1))[0].id == nxt.id
    await stub.DeleteSession(session_service_pb2.DeleteSessionRequest(id=session.id), metadata=md)
    async with asyncio.timeout(DEADLINE_S):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_client_cancel_releases_the_subscription(
    stub: Stub, md: Metadata, sessions: SessionsServer
) -> None:
    session = await create(stub, md)
    head = await append(stub, md, session.id, text_event("head"))
    hub = sessions.backend.hub
    before = hub.subscriber_count
    call = _stream(stub, md, session.id, after=head.id)
    nxt = await append(stub, md, session.id, text_event("next"))
    assert (await _take(call, 1))[0].id == nxt.id
    assert hub.subscriber_count == before + 1
    call.cancel()
    async with asyncio.timeout(DEADLINE_S):
        # The hub announces no unsubscription; poll the condition under the deadline.
        while hub.subscriber_count != before:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_server_stop_ends_open_streams(pg_url: str, md: Metadata) -> None:
    running = await start_server(pg_url, sweep_interval_s=3600.0)
    session = await create(running.stub, md)
    head = await append(running.stub, md, session.id, text_event("head"))
    call = _stream(running.stub, md, session.id, after=head.id)
    nxt = await append(running.stub, md, session.id, text_event("next"))
    assert (await _take(call, 1))[0].id == nxt.id
    started = time.monotonic()
    async with asyncio.timeout(DEADLINE_S):
        await running.server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert time.monotonic() - started < 5.0
    assert running.backend._hub is None  # stopped with the component
    await running.channel.close()


async def test_unknown_session_or_event_is_not_found(stub: Stub, md: Metadata) -> None:
    error = await failure(_stream(stub, md, str(uuid.uuid4())).read())
    assert error.code == grpc.StatusCode.NOT_FOUND
    session = await create(stub, md)
    error = await failure(_stream(stub, md, session.id, after=str(uuid.uuid4())).read())
    assert error.code == grpc.StatusCode.NOT_FOUND
