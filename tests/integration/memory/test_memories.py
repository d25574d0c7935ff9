"""Memories over gRPC: create, get, list, update, delete, idempotency and bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2

from contextiq.memory.v1 import memory_pb2, memory_service_pb2, memory_service_pb2_grpc
from tests.integration.memory.conftest import create, field_of, reason_of, search

Auth = Callable[..., tuple[tuple[str, str], ...]]
Stub = memory_service_pb2_grpc.MemoryServiceStub


def _struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def _count(stub: Stub, metadata: Any, **fields: Any) -> int:
    response = await stub.ListMemories(
        memory_service_pb2.ListMemoriesRequest(page_size=1000, **fields), metadata=metadata
    )
    return len(response.memories)


async def test_create_returns_the_memory_and_get_reads_it(memories: Stub, auth: Auth) -> None:
    created = await create(
        memories,
        auth(),
        "  The user prefers dark mode.  ",
        scope={"user_id": "u1", "agent_id": "a"},
        topic="USER_PREFERENCES",
        confidence=0.8,
        metadata=_struct(source="settings"),
        source_session_id="s-1",
        source_event_ids=["e-1", "e-2"],
    )
    assert created.id
    assert created.fact == "The user prefers dark mode."
    assert dict(created.scope) == {"user_id": "u1", "agent_id": "a"}
    assert created.topic == "USER_PREFERENCES"
    assert created.confidence == pytest.approx(0.8)
    assert created.revision_count == 1
    assert created.bank_id == "default"
    assert created.etag
    assert list(created.source_event_ids) == ["e-1", "e-2"]
    assert not created.HasField("expires_at")
    fetched = await memories.GetMemory(
        memory_service_pb2.GetMemoryRequest(id=created.id), metadata=auth("MEMORY_READ")
    )
    assert fetched == created


async def test_confidence_defaults_to_one_and_ttl_sets_expires_at(
    memories: Stub, auth: Auth
) -> None:
    created = await create(memories, auth(), "fact", ttl=duration_pb2.Duration(seconds=3600))
    assert created.confidence == 1.0
    assert created.HasField("expires_at")
    assert 3590 < created.expires_at.seconds - created.created_at.seconds <= 3600


async def test_request_id_makes_create_idempotent(memories: Stub, auth: Auth) -> None:
    first = await create(memories, auth(), "the user owns a cat", request_id="req-1")
    again = await create(memories, auth(), "the user owns a cat", request_id="req-1")
    assert again.id == first.id
    assert await _count(memories, auth()) == 1


async def test_get_unknown_memory_is_not_found(memories: Stub, auth: Auth) -> None:
    for memory_id in ("0b7c9a3e-1b2c-4d5e-8f90-123456789abc", "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await memories.GetMemory(
                memory_service_pb2.GetMemoryRequest(id=memory_id), metadata=auth()
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_filters_and_paginates(memories: Stub, auth: Auth) -> None:
    await create(memories, auth(), "a", scope={"user_id": "u1"}, topic="USER_PREFERENCES")
    await create(memories, auth(), "b", scope={"user_id": "u2"}, metadata=_struct(team="x"))
    await create(memories, auth(), "c", scope={"user_id": "u2"}, topic="USER_PREFERENCES")
    request = memory_service_pb2.ListMemoriesRequest
    assert await _count(memories, auth(), filter='scope.user_id = "u2"') == 2
    assert await _count(memories, auth(), filter="topic = USER_PREFERENCES") == 2
    assert await _count(memories, auth(), filter='metadata.team = "x"') == 1
    assert await _count(memories, auth(), filter='created_at > "2000-01-01T00:00:00Z"') == 3
    assert await _count(memories, auth(), filter='created_at < "2000-01-01T00:00:00Z"') == 0
    seen: list[str] = []
    token = ""
    while True:
        page = await memories.ListMemories(
            request(page_size=2, page_token=token, order_by="created_at asc"), metadata=auth()
        )
        seen.extend(m.fact for m in page.memories)
        token = page.next_page_token
        if not token:
            break
    assert seen == ["a", "b", "c"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.ListMemories(
            request(page_size=2, page_token=token or "bad!", filter="topic = X"), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_update_with_mask_and_etag(memories: Stub, auth: Auth) -> None:
    created = await create(memories, auth(), "the user lives in Paris", topic="USER_PERSONAL_INFO")
    updated = await memories.UpdateMemory(
        memory_service_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=created.id, fact="the user lives in Berlin", topic="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["fact"]),
            etag=created.etag,
        ),
        metadata=auth(),
    )
    assert updated.fact == "the user lives in Berlin"
    assert updated.topic == "USER_PERSONAL_INFO"  # not in the mask
    assert updated.revision_count == 2
    assert updated.etag != created.etag
    # The stale etag is refused.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.UpdateMemory(
            memory_service_pb2.UpdateMemoryRequest(
                memory=memory_pb2.Memory(id=created.id, fact="Rome"), etag=created.etag
            ),
            metadata=auth(),
        )
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert reason_of(info.value) == "ETAG_MISMATCH"
    # The new fact is what search finds, at once.
    results = await search(memories, auth(), "Berlin")
    assert results[0].memory.fact == "the user lives in Berlin"
    assert "keyword" in results[0].matched_signals


async def test_update_without_mask_infers_it_and_can_clear_expiration(
    memories: Stub, auth: Auth
) -> None:
    created = await create(memories, auth(), "x", ttl=duration_pb2.Duration(seconds=60))
    updated = await memories.UpdateMemory(
        memory_service_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=created.id, confidence=0.5)
        ),
        metadata=auth(),
    )
    assert updated.confidence == 0.5
    assert updated.HasField("expires_at")
    cleared = await memories.UpdateMemory(
        memory_service_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=created.id),
            update_mask=field_mask_pb2.FieldMask(paths=["expires_at"]),
        ),
        metadata=auth(),
    )
    assert not cleared.HasField("expires_at")


async def test_delete_hides_the_memory_everywhere(memories: Stub, auth: Auth) -> None:
    created = await create(memories, auth(), "the user plays the cello")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.DeleteMemory(
            memory_service_pb2.DeleteMemoryRequest(id=created.id, etag="stale"), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.ABORTED
    await memories.DeleteMemory(
        memory_service_pb2.DeleteMemoryRequest(id=created.id, etag=created.etag), metadata=auth()
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.GetMemory(
            memory_service_pb2.GetMemoryRequest(id=created.id), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _count(memories, auth()) == 0
    assert await search(memories, auth(), "cello") == []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.DeleteMemory(
            memory_service_pb2.DeleteMemoryRequest(id=created.id), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


BAD_CREATES: list[tuple[str, dict[str, Any], str]] = [
    ("empty fact", {"fact": "   "}, "fact"),
    ("no scope", {"scope": {}}, "scope"),
    ("six pairs", {"scope": {f"k{i}": "v" for i in range(6)}}, "scope"),
    ("empty key", {"scope": {"": "v"}}, "scope"),
    ("empty value", {"scope": {"user_id": ""}}, "scope"),
    ("unknown topic", {"topic": "NOT_A_TOPIC"}, "topic"),
    ("confidence above one", {"confidence": 1.5}, "confidence"),
    ("ttl negative", {"ttl": duration_pb2.Duration(seconds=-5)}, "ttl"),
    ("bad bank id", {"bank_id": "Bad_Bank"}, "bank_id"),
]


@pytest.mark.parametrize(("case", "fields", "field"), BAD_CREATES, ids=[c[0] for c in BAD_CREATES])
async def test_bad_create_is_invalid_argument_and_writes_nothing(
    memories: Stub, auth: Auth, case: str, fields: dict[str, Any], field: str
) -> None:
    request = memory_service_pb2.CreateMemoryRequest(scope={"user_id": "u1"}, fact="ok")
    for name, value in fields.items():
        if name == "scope":
            request.ClearField("scope")
            request.scope.update(value)
        elif name == "ttl":
            request.ttl.CopyFrom(value)
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.CreateMemory(request, metadata=auth())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert field_of(info.value) == field
    assert await _count(memories, auth()) == 0


BAD_SEARCHES: list[tuple[str, dict[str, Any], str]] = [
    ("top_k zero is default, 101 is not", {"top_k": 101}, "top_k"),
    ("top_k negative", {"top_k": -1}, "top_k"),
    ("malformed filter", {"filter": "topic = "}, "filter"),
    ("unknown filter field", {"filter": "color = red"}, "filter"),
    ("empty query", {"search_query": " "}, "search_query"),
    ("six pair scope", {"scope": {f"k{i}": "v" for i in range(6)}}, "scope"),
]


@pytest.mark.parametrize(
    ("case", "fields", "field"), BAD_SEARCHES, ids=[c[0] for c in BAD_SEARCHES]
)
async def test_bad_search_is_invalid_argument(
    memories: Stub, auth: Auth, case: str, fields: dict[str, Any], field: str
) -> None:
    request = memory_service_pb2.SearchMemoriesRequest(scope={"user_id": "u1"}, search_query="q")
    for name, value in fields.items():
        if name == "scope":
            request.ClearField("scope")
            request.scope.update(value)
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.SearchMemories(request, metadata=auth())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert field_of(info.value) == field


async def test_bad_update_names_the_field_and_changes_nothing(memories: Stub, auth: Auth) -> None:
    created = await create(memories, auth(), "original", topic="USER_PREFERENCES")
    cases = [
        (memory_pb2.Memory(id=created.id, fact=" "), ["fact"], "memory.fact"),
        (memory_pb2.Memory(id=created.id, topic="NOPE"), ["topic"], "memory.topic"),
        (memory_pb2.Memory(id=created.id, fact="x"), ["scope"], "update_mask"),
        (memory_pb2.Memory(id=created.id, scope={"user_id": "other"}), None, "memory.scope"),
    ]
    for memory, paths, field in cases:
        request = memory_service_pb2.UpdateMemoryRequest(memory=memory)
        if paths is not None:
            request.update_mask.paths.extend(paths)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await memories.UpdateMemory(request, metadata=auth())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field_of(info.value) == field
    unchanged = await memories.GetMemory(
        memory_service_pb2.GetMemoryRequest(id=created.id), metadata=auth()
    )
    assert unchanged == created
