"""Many agents appending to one session: nothing lost, one total order, stale views detected."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from contextiq.sessions.v1 import session_service_pb2
from tests.integration.sessions.conftest import (
    Metadata,
    Stub,
    append,
    as_dict,
    create,
    delta_event,
    failure,
    get,
    rpc_failure,
    text_event,
)

WRITERS = 16
PER_WRITER = 25


async def test_concurrent_appends_lose_no_event_and_no_state_update(
    stub: Stub, md: Metadata
) -> None:
    session = await create(stub, md, app_name="app")
    sibling = await create(stub, md, app_name="app")

    async def writer(w: int) -> list[str]:
        ids = []
        for i in range(PER_WRITER):
            event = delta_event(
                {f"w{w}_{i}": i, f"user:w{w}": i, f"app:w{w}": i},
                agent_name=f"agent-{w}",
            )
            ids.append((await append(stub, md, session.id, event)).id)
        return ids

    written = [
        event_id for ids in await asyncio.gather(*map(writer, range(WRITERS))) for event_id in ids
    ]
    total = WRITERS * PER_WRITER
    fetched = await get(stub, md, session.id)
    assert fetched.event_count == total
    assert [e.sequence for e in fetched.events] == list(range(1, total + 1))
    assert sorted(e.id for e in fetched.events) == sorted(written)
    assert fetched.last_event_id == fetched.events[-1].id
    # Each writer's own events keep their order inside the total order.
    for w in range(WRITERS):
        mine = [e for e in fetched.events if e.agent_name == f"agent-{w}"]
        order = [int(e.actions.state_delta.fields[f"app:w{w}"].number_value) for e in mine]
        assert order == list(range(PER_WRITER))
    state = as_dict(fetched.state)
    for w in range(WRITERS):
        for i in range(PER_WRITER):
            assert state[f"w{w}_{i}"] == i
        assert state[f"user:w{w}"] == PER_WRITER - 1
        assert state[f"app:w{w}"] == PER_WRITER - 1
    shared = as_dict((await get(stub, md, sibling.id)).state)
    assert {k for k in shared if k.startswith("app:")} == {f"app:w{w}" for w in range(WRITERS)}


async def test_concurrent_appends_to_many_sessions_of_one_user(stub: Stub, md: Metadata) -> None:
    sessions = [await create(stub, md, user_id="alice", app_name="app") for _ in range(8)]

    async def writer(index: int) -> None:
        for i in range(10):
            await append(stub, md, sessions[index].id, delta_event({f"user:s{index}_{i}": i}))

    await asyncio.gather(*map(writer, range(len(sessions))))
    state = as_dict((await get(stub, md, sessions[0].id)).state)
    assert len(state) == 80


async def test_stale_append_is_aborted_with_the_current_position(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    seen = await append(stub, md, session.id, text_event("first"))
    newer = await append(stub, md, session.id, text_event("someone else"))
    error = await failure(
        append(stub, md, session.id, text_event("stale view"), expected_last_event_id=seen.id)
    )
    assert error.code == grpc.StatusCode.ABORTED
    assert error.reason == "STALE_APPEND"
    assert error.metadata["current_last_event_id"] == newer.id
    assert error.metadata["current_sequence"] == "2"
    assert (await get(stub, md, session.id)).event_count == 2
    fresh = await append(
        stub, md, session.id, text_event("up to date"), expected_last_event_id=newer.id
    )
    assert fresh.sequence == 3


async def test_racing_conditional_appends_let_exactly_one_through(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    head = await append(stub, md, session.id, text_event("head"))

    async def attempt(i: int) -> str:
        request = session_service_pb2.AppendEventRequest(
            session_id=session.id,
            event=delta_event({"winner": i}),
            expected_last_event_id=head.id,
        )
        try:
            await stub.AppendEvent(request, metadata=md)
        except grpc.aio.AioRpcError as exc:
            return rpc_failure(exc).reason
        return "appended"

    outcomes = await asyncio.gather(*map(attempt, range(12)))
    assert sorted(outcomes) == ["STALE_APPEND"] * 11 + ["appended"]
    fetched = await get(stub, md, session.id)
    assert fetched.event_count == 2
    winner = int(as_dict(fetched.state)["winner"])
    assert as_dict(fetched.events[-1].actions.state_delta) == {"winner": winner}


async def test_concurrent_retries_of_one_event_store_it_once(stub: Stub, md: Metadata) -> None:
    session = await create(stub, md)
    event_id = str(uuid.uuid4())
    results = await asyncio.gather(
        *(append(stub, md, session.id, delta_event({"n": 1}, id=event_id)) for _ in range(10))
    )
    assert {r.sequence for r in results} == {1}
    assert (await get(stub, md, session.id)).event_count == 1
