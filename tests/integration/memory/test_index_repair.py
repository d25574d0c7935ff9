"""Postgres is the truth: a failed index write never shows in results and gets repaired."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
import pytest

from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from memory_svc.index.edge import EdgeIndex
from memory_svc.index.protocol import IndexPoint
from tests.integration.memory.conftest import MemoryServer, create, search, start_memory_server

Auth = Callable[..., tuple[tuple[str, str], ...]]


class BreakableIndex(EdgeIndex):
    """The embedded index, with writes that fail while ``broken``."""

    broken = False

    async def upsert(self, collection: str, points: Sequence[IndexPoint]) -> None:
        if self.broken:
            raise OSError("disk full")
        await super().upsert(collection, points)

    async def delete(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        if self.broken:
            raise OSError("disk full")
        await super().delete(collection, ids)


@pytest.fixture(scope="module")
async def flaky_server(pg_url: str, service_tmp_path: Path) -> AsyncIterator[MemoryServer]:
    running = await start_memory_server(
        pg_url,
        index=BreakableIndex(service_tmp_path / "flaky-index"),
        repair_after_s=0.0,
        repair_interval_s=3600.0,
    )
    try:
        yield running
    finally:
        await running.server.stop()


async def test_writes_survive_index_failures_and_repair_fixes_the_index(
    flaky_server: MemoryServer, auth: Auth
) -> None:
    index = flaky_server.parts.index
    assert isinstance(index, BreakableIndex)
    async with grpc.aio.insecure_channel(flaky_server.address) as channel:
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        doomed = await create(stub, auth(), "the user owns a sailboat")
        index.broken = True
        try:
            added = await create(stub, auth(), "the user owns a kayak")
            await stub.DeleteMemory(
                memory_service_pb2.DeleteMemoryRequest(id=doomed.id), metadata=auth()
            )
            # Postgres has the truth: the new memory reads fine...
            got = await stub.GetMemory(
                memory_service_pb2.GetMemoryRequest(id=added.id), metadata=auth()
            )
            assert got.fact == "the user owns a kayak"
            # ...and the deleted one, still in the index, never comes back from search.
            assert [r.memory.id for r in await search(stub, auth(), "sailboat")] == []
        finally:
            index.broken = False
        assert await flaky_server.parts.backend.sync.repair() >= 2
        found = await search(stub, auth(), "kayak", mode=memory_service_pb2.SEARCH_MODE_KEYWORD)
        assert [r.memory.id for r in found] == [added.id]
        assert await flaky_server.parts.backend.sync.repair() == 0
