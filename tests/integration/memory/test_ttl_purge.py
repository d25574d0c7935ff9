"""TTL (expired memories vanish at once, the sweeper purges them) and PurgeMemories."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from contextiq.memory.v1 import memory_pb2, memory_service_pb2, memory_service_pb2_grpc
from memory_svc.index.protocol import IndexFilter
from memory_svc.sweeper import sweep_expired
from tests.integration.memory.conftest import MemoryServer, ShiftableClock, create, field_of, search

Auth = Callable[..., tuple[tuple[str, str], ...]]
Stub = memory_service_pb2_grpc.MemoryServiceStub


async def _index_count(server: MemoryServer, tenant: str) -> int:
    backend = server.parts.backend
    collection = await backend.collection(backend.banks.default)
    return await server.parts.index.count(
        collection, IndexFilter(tenant_id=tenant, bank_id="default")
    )


async def test_expired_memories_vanish_at_once_and_the_sweeper_purges_them(
    memories: Stub,
    auth: Auth,
    tenant: str,
    clock: ShiftableClock,
    memory_server: MemoryServer,
) -> None:
    short = await create(
        memories, auth(), "the user is at the airport", ttl=duration_pb2.Duration(seconds=60)
    )
    await create(memories, auth(), "the user is vegetarian")
    assert len(await search(memories, auth(), "airport")) == 2
    clock.offset = timedelta(seconds=61)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.GetMemory(memory_service_pb2.GetMemoryRequest(id=short.id), metadata=auth())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await memories.ListMemories(memory_service_pb2.ListMemoriesRequest(), metadata=auth())
    assert [m.fact for m in listed.memories] == ["the user is vegetarian"]
    assert [r.memory.fact for r in await search(memories, auth(), "airport")] == [
        "the user is vegetarian"
    ]
    assert await _index_count(memory_server, tenant) == 2
    assert await sweep_expired(memory_server.parts.backend) >= 1
    assert await _index_count(memory_server, tenant) == 1
    # The history survives the purge.
    revisions = await memories.ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(memory_id=short.id), metadata=auth()
    )
    assert [r.action for r in revisions.revisions] == ["CREATED"]


async def test_bank_create_ttl_applies_when_the_request_has_none(
    memories: Stub, bank_stub: memory_service_pb2_grpc.MemoryBankServiceStub, auth: Auth
) -> None:
    bank = memory_pb2.MemoryBank(
        ttl_config=memory_pb2.TtlConfig(default_ttl=duration_pb2.Duration(seconds=100))
    )
    await bank_stub.CreateMemoryBank(
        memory_service_pb2.CreateMemoryBankRequest(memory_bank=bank, memory_bank_id="short"),
        metadata=auth(),
    )
    created = await create(memories, auth(), "temporary", bank_id="short")
    assert created.expires_at.seconds - created.created_at.seconds in (99, 100)


async def test_purge_without_force_only_reports(
    memories: Stub, auth: Auth, tenant: str, memory_server: MemoryServer
) -> None:
    ids = {
        (await create(memories, auth(), f"work fact {i}", topic="KEY_CONVERSATION_DETAILS")).id
        for i in range(3)
    }
    kept = await create(memories, auth(), "the user likes jazz", topic="USER_PREFERENCES")
    dry = await memories.PurgeMemories(
        memory_service_pb2.PurgeMemoriesRequest(filter="topic = KEY_CONVERSATION_DETAILS"),
        metadata=auth(),
    )
    assert (dry.purge_count, dry.purged, set(dry.memory_ids)) == (3, False, ids)
    listed = await memories.ListMemories(memory_service_pb2.ListMemoriesRequest(), metadata=auth())
    assert len(listed.memories) == 4
    done = await memories.PurgeMemories(
        memory_service_pb2.PurgeMemoriesRequest(
            filter="topic = KEY_CONVERSATION_DETAILS", force=True
        ),
        metadata=auth(),
    )
    assert (done.purge_count, done.purged, set(done.memory_ids)) == (3, True, ids)
    listed = await memories.ListMemories(memory_service_pb2.ListMemoriesRequest(), metadata=auth())
    assert [m.id for m in listed.memories] == [kept.id]
    assert await _index_count(memory_server, tenant) == 1
    revisions = await memories.ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(memory_id=next(iter(ids))), metadata=auth()
    )
    assert [r.action for r in revisions.revisions] == ["DELETED", "CREATED"]
    everything = await memories.PurgeMemories(
        memory_service_pb2.PurgeMemoriesRequest(filter="*", force=True), metadata=auth()
    )
    assert everything.purge_count == 1


@pytest.mark.parametrize("bad", ["", "topic =", "nope = 1"])
async def test_purge_needs_a_valid_filter(memories: Stub, auth: Auth, bad: str) -> None:
    await create(memories, auth(), "keep me")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.PurgeMemories(
            memory_service_pb2.PurgeMemoriesRequest(filter=bad, force=True), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == "filter"
    listed = await memories.ListMemories(memory_service_pb2.ListMemoriesRequest(), metadata=auth())
    assert len(listed.memories) == 1
