"""ReindexMemories rebuilds the index from Postgres; its operation is readable via Operations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc

from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from tests.integration.memory.conftest import MemoryServer, create, search

Auth = Callable[..., tuple[tuple[str, str], ...]]
Stub = memory_service_pb2_grpc.MemoryServiceStub

QUERIES = ["outdoor sports", "food allergies", "family", "travel preferences", "music"]
FACTS = [
    "The user goes rock climbing on weekends.",
    "The user cannot eat gluten.",
    "The user's brother lives in Toronto.",
    "The user always books aisle seats.",
    "The user plays bass guitar in a band.",
    "The user runs half marathons.",
    "The user is lactose intolerant.",
    "The user has two daughters.",
]


async def wait_done(
    ops: operations_pb2_grpc.OperationsStub, who: object, name: str, *, within_s: float = 30.0
) -> operations_pb2.Operation:
    """Poll GetOperation until done, with a deadline."""
    deadline = time.monotonic() + within_s
    while True:
        operation: operations_pb2.Operation = await ops.GetOperation(
            operations_pb2.GetOperationRequest(name=name), metadata=who
        )
        if operation.done or time.monotonic() > deadline:
            return operation
        await asyncio.sleep(0.05)


async def _rankings(
    memories: Stub, who: tuple[tuple[str, str], ...]
) -> list[list[tuple[str, float]]]:
    out = []
    for query in QUERIES:
        results = await search(memories, who, query)
        out.append([(r.memory.id, round(r.score, 6)) for r in results])
    return out


async def test_reindex_rebuilds_an_equivalent_index(
    memories: Stub,
    operations: operations_pb2_grpc.OperationsStub,
    auth: Auth,
    tenant: str,
    memory_server: MemoryServer,
) -> None:
    for fact in FACTS:
        await create(memories, auth(), fact)
    deleted = await create(memories, auth(), "The user hates climbing now.")
    await memories.DeleteMemory(
        memory_service_pb2.DeleteMemoryRequest(id=deleted.id), metadata=auth()
    )
    before = await _rankings(memories, auth())
    # Lose the index entirely (as after losing its disk), then rebuild it from Postgres.
    backend = memory_server.parts.backend
    collection = await backend.collection(backend.banks.default)
    await memory_server.parts.index.delete_bank(collection, tenant_id=tenant, bank_id="default")
    assert await search(memories, auth(), "outdoor sports") == []
    started = await memories.ReindexMemories(
        memory_service_pb2.ReindexMemoriesRequest(), metadata=auth()
    )
    assert started.name.startswith("operations/")
    finished = await wait_done(operations, auth(), started.name)
    assert finished.done
    assert not finished.HasField("error")
    response = memory_service_pb2.ReindexMemoriesResponse()
    assert finished.response.Unpack(response)
    assert response.indexed_count == len(FACTS)
    metadata = memory_service_pb2.ReindexMemoriesMetadata()
    assert finished.metadata.Unpack(metadata)
    assert metadata.indexed_count == len(FACTS)
    assert await _rankings(memories, auth()) == before
    listed = await operations.ListOperations(
        operations_pb2.ListOperationsRequest(), metadata=auth()
    )
    assert [op.name for op in listed.operations] == [started.name]
    done_filter = await operations.ListOperations(
        operations_pb2.ListOperationsRequest(filter="done = false"), metadata=auth()
    )
    assert list(done_filter.operations) == []


async def test_reindex_needs_admin_and_unknown_operations_are_not_found(
    memories: Stub, operations: operations_pb2_grpc.OperationsStub, auth: Auth
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memories.ReindexMemories(
            memory_service_pb2.ReindexMemoriesRequest(), metadata=auth("MEMORY_WRITE")
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for name in ("operations/6b1d3a8e-0000-4000-8000-000000000000", "operations/x", "nope"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await operations.GetOperation(
                operations_pb2.GetOperationRequest(name=name), metadata=auth()
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
