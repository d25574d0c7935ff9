"""BatchCreateMemories: many memories in one call, all or none, idempotent per request_id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from tests.integration.memory.conftest import create, field_of, search

Auth = Callable[..., tuple[tuple[str, str], ...]]
Stub = memory_service_pb2_grpc.MemoryServiceStub
pb = memory_service_pb2


def _req(fact: str, **fields: Any) -> pb.CreateMemoryRequest:
    fields.setdefault("scope", {"user_id": "u1"})
    return pb.CreateMemoryRequest(fact=fact, **fields)


async def _batch(stub: Stub, who: Any, *requests: pb.CreateMemoryRequest) -> list[Any]:
    response = await stub.BatchCreateMemories(
        pb.BatchCreateMemoriesRequest(requests=list(requests)), metadata=who
    )
    return list(response.memories)


async def _all(stub: Stub, who: Any) -> list[Any]:
    response = await stub.ListMemories(pb.ListMemoriesRequest(page_size=1000), metadata=who)
    return list(response.memories)


async def test_batch_creates_every_memory_in_order_with_its_revision_and_index_entry(
    memories: Stub, auth: Auth
) -> None:
    facts = [
        "The user keeps bees on the roof.",
        "The user is training for the Berlin marathon.",
        "The user's daughter plays the cello.",
    ]
    created = await _batch(
        memories,
        auth(),
        _req(facts[0], topic="USER_PERSONAL_INFO", confidence=0.7),
        _req(facts[1], scope={"user_id": "u2"}),
        _req(facts[2], source_session_id="s-9", source_event_ids=["e-1"]),
    )
    assert [m.fact for m in created] == facts
    assert len({m.id for m in created}) == 3
    assert created[0].topic == "USER_PERSONAL_INFO"
    assert created[0].confidence == pytest.approx(0.7)
    assert dict(created[1].scope) == {"user_id": "u2"}
    assert list(created[2].source_event_ids) == ["e-1"]
    assert all(m.revision_count == 1 for m in created)
    for memory in created:
        fetched = await memories.GetMemory(pb.GetMemoryRequest(id=memory.id), metadata=auth())
        assert fetched == memory
        revisions = await memories.ListMemoryRevisions(
            pb.ListMemoryRevisionsRequest(memory_id=memory.id), metadata=auth()
        )
        assert [r.action for r in revisions.revisions] == ["CREATED"]
    # Searchable when the call returns, with the same vector CreateMemory would give.
    hits = await search(memories, auth(), "beekeeping on the roof")
    assert hits
    assert hits[0].memory.id == created[0].id
    single = await create(memories, auth(), facts[2], scope={"user_id": "u3"})
    by_batch = await search(memories, auth(), facts[2])
    by_single = await search(memories, auth(), facts[2], scope={"user_id": "u3"})
    assert by_batch[0].memory.id == created[2].id
    assert by_single[0].memory.id == single.id
    assert by_batch[0].dense_score == pytest.approx(by_single[0].dense_score, abs=1e-5)


async def test_request_ids_make_a_retried_batch_return_the_same_memories(
    memories: Stub, auth: Auth
) -> None:
    earlier = await create(memories, auth(), "The user owns a kayak.", request_id="k-0")
    requests = [
        _req("The user owns a kayak.", request_id="k-0"),
        _req("The user sails on Sundays.", request_id="k-1"),
        _req("The user fears deep water."),
    ]
    first = await _batch(memories, auth(), *requests)
    assert first[0].id == earlier.id
    again = await _batch(memories, auth(), *requests[:2])
    assert [m.id for m in again] == [first[0].id, first[1].id]
    assert len(await _all(memories, auth())) == 3


@pytest.mark.parametrize(
    ("requests", "field"),
    [
        ([], "requests"),
        ([_req("fine"), _req("   ")], "requests[1].fact"),
        ([_req("fine"), _req("x", scope={"": "v"})], "requests[1].scope"),
        ([_req("fine"), _req("fine too", topic="NO_SUCH_TOPIC")], "requests[1].topic"),
        ([_req("a", request_id="r"), _req("b", request_id="r")], "requests[1].request_id"),
        ([_req("a"), _req("b", bank_id="other")], "requests[1].bank_id"),
        ([_req("a", confidence=2.0)], "requests[0].confidence"),
    ],
)
async def test_a_bad_request_rejects_the_whole_batch_and_names_it(
    memories: Stub, auth: Auth, requests: list[pb.CreateMemoryRequest], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _batch(memories, auth(), *requests)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value).startswith(field)
    assert await _all(memories, auth()) == []


async def test_more_than_a_thousand_is_rejected(memories: Stub, auth: Auth) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _batch(memories, auth(), *[_req(f"fact {i}") for i in range(1001)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == "requests"
    assert await _all(memories, auth()) == []


async def test_an_unknown_bank_is_not_found(memories: Stub, auth: Auth) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _batch(memories, auth(), _req("a", bank_id="nope"), _req("b", bank_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_writing_needs_memory_write(memories: Stub, auth: Auth) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _batch(memories, auth("MEMORY_READ"), _req("a"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await _all(memories, auth()) == []


async def test_concurrent_batches_with_the_same_request_ids_create_each_memory_once(
    memories: Stub, auth: Auth
) -> None:
    requests = [_req(f"The user visited city number {i}.", request_id=f"c-{i}") for i in range(20)]
    first, second = await asyncio.gather(
        _batch(memories, auth(), *requests), _batch(memories, auth(), *reversed(requests))
    )
    assert [m.id for m in first] == [m.id for m in reversed(second)]
    assert len(await _all(memories, auth())) == 20
