"""Revisions: every change writes one; list/get them; rollback; reading as of a past time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from contextiq.memory.v1 import memory_pb2, memory_service_pb2, memory_service_pb2_grpc
from tests.integration.memory.conftest import MemoryServer, create, search

Auth = Callable[..., tuple[tuple[str, str], ...]]
Stub = memory_service_pb2_grpc.MemoryServiceStub


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def _update(stub: Stub, who: object, memory_id: str, fact: str) -> memory_pb2.Memory:
    updated: memory_pb2.Memory = await stub.UpdateMemory(
        memory_service_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=memory_id, fact=fact),
            update_mask=field_mask_pb2.FieldMask(paths=["fact"]),
        ),
        metadata=who,
    )
    return updated


async def _revisions(stub: Stub, who: object, memory_id: str) -> list[memory_pb2.MemoryRevision]:
    response = await stub.ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(memory_id=memory_id), metadata=who
    )
    return list(response.revisions)


async def test_every_change_writes_an_immutable_revision(memories: Stub, auth: Auth) -> None:
    created = await create(
        memories, auth(), "likes tea", source_session_id="s1", source_event_ids=["e1"]
    )
    await _update(memories, auth(), created.id, "likes coffee")
    await memories.DeleteMemory(
        memory_service_pb2.DeleteMemoryRequest(id=created.id), metadata=auth()
    )
    revisions = await _revisions(memories, auth("MEMORY_READ"), created.id)
    assert [(r.revision_number, r.action, r.fact) for r in revisions] == [
        (3, "DELETED", "likes coffee"),
        (2, "UPDATED", "likes coffee"),
        (1, "CREATED", "likes tea"),
    ]
    first = revisions[-1]
    assert first.source_session_id == "s1"
    assert list(first.source_event_ids) == ["e1"]
    assert first.memory_id == created.id
    one = await memories.GetMemoryRevision(
        memory_service_pb2.GetMemoryRevisionRequest(memory_id=created.id, revision_number=1),
        metadata=auth(),
    )
    assert one == first
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.GetMemoryRevision(
            memory_service_pb2.GetMemoryRevisionRequest(memory_id=created.id, revision_number=9),
            metadata=auth(),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_revisions_paginate_newest_first(memories: Stub, auth: Auth) -> None:
    created = await create(memories, auth(), "v1")
    for i in range(2, 6):
        await _update(memories, auth(), created.id, f"v{i}")
    numbers: list[int] = []
    token = ""
    while True:
        page = await memories.ListMemoryRevisions(
            memory_service_pb2.ListMemoryRevisionsRequest(
                memory_id=created.id, page_size=2, page_token=token
            ),
            metadata=auth(),
        )
        numbers.extend(r.revision_number for r in page.revisions)
        token = page.next_page_token
        if not token:
            break
    assert numbers == [5, 4, 3, 2, 1]


async def test_rollback_restores_content_as_a_new_revision(memories: Stub, auth: Auth) -> None:
    created = await create(memories, auth(), "the user lives in Lyon", topic="USER_PERSONAL_INFO")
    await _update(memories, auth(), created.id, "the user lives in Oslo")
    restored = await memories.RollbackMemory(
        memory_service_pb2.RollbackMemoryRequest(id=created.id, revision_number=1),
        metadata=auth(),
    )
    assert restored.fact == "the user lives in Lyon"
    assert restored.revision_count == 3
    newest = (await _revisions(memories, auth(), created.id))[0]
    assert (newest.action, newest.rolled_back_to, newest.fact) == ("ROLLED_BACK", 1, restored.fact)
    results = await search(memories, auth(), "Lyon")
    assert [r.memory.fact for r in results] == ["the user lives in Lyon"]
    assert await search(memories, auth(), "Oslo", mode=memory_service_pb2.SEARCH_MODE_KEYWORD) == []


async def test_rollback_brings_a_deleted_memory_back(memories: Stub, auth: Auth) -> None:
    created = await create(memories, auth(), "the user speaks Finnish")
    await memories.DeleteMemory(
        memory_service_pb2.DeleteMemoryRequest(id=created.id), metadata=auth()
    )
    restored = await memories.RollbackMemory(
        memory_service_pb2.RollbackMemoryRequest(id=created.id, revision_number=1),
        metadata=auth(),
    )
    assert restored.fact == "the user speaks Finnish"
    fetched = await memories.GetMemory(
        memory_service_pb2.GetMemoryRequest(id=created.id), metadata=auth()
    )
    assert fetched.fact == restored.fact
    assert [r.memory.id for r in await search(memories, auth(), "Finnish")] == [created.id]


async def test_rollback_checks_the_etag(memories: Stub, auth: Auth) -> None:
    created = await create(memories, auth(), "a")
    await _update(memories, auth(), created.id, "b")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.RollbackMemory(
            memory_service_pb2.RollbackMemoryRequest(
                id=created.id, revision_number=1, etag=created.etag
            ),
            metadata=auth(),
        )
    assert info.value.code() == grpc.StatusCode.ABORTED


async def test_as_of_lists_and_searches_the_past(
    memories: Stub, auth: Auth, memory_server: MemoryServer
) -> None:
    clock = memory_server.clock
    tea = await create(memories, auth(), "the user drinks green tea every morning")
    bike = await create(memories, auth(), "the user rides a red bicycle to work")
    t1 = clock()
    await _update(memories, auth(), tea.id, "the user drinks black coffee every morning")
    await memories.DeleteMemory(memory_service_pb2.DeleteMemoryRequest(id=bike.id), metadata=auth())
    t2 = clock()
    extra = await create(memories, auth(), "the user adopted a dog")

    async def listed(at: datetime) -> set[str]:
        response = await memories.ListMemories(
            memory_service_pb2.ListMemoriesRequest(as_of=_ts(at)), metadata=auth()
        )
        return {m.fact for m in response.memories}

    assert await listed(t1) == {
        "the user drinks green tea every morning",
        "the user rides a red bicycle to work",
    }
    assert await listed(t2) == {"the user drinks black coffee every morning"}
    past = await search(memories, auth(), "tea", as_of=_ts(t1))
    assert past[0].memory.fact == "the user drinks green tea every morning"
    assert past[0].memory.id == tea.id
    assert {r.memory.id for r in past} == {tea.id, bike.id}
    bicycle = await search(
        memories, auth(), "bicycle", as_of=_ts(t1), mode=memory_service_pb2.SEARCH_MODE_KEYWORD
    )
    assert [r.memory.id for r in bicycle] == [bike.id]
    now_results = await search(memories, auth(), "tea")
    assert {r.memory.id for r in now_results} == {tea.id, extra.id}
    assert (
        await search(
            memories, auth(), "bicycle", as_of=_ts(t2), mode=memory_service_pb2.SEARCH_MODE_KEYWORD
        )
        == []
    )
