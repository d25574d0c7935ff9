"""A real memory server (Postgres, embedded Qdrant engine, ONNX embeddings, real auth) shared
by the memory tests, plus stubs and a clock the tests can move forward."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2_grpc

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from contextiq.memory.v1 import memory_pb2, memory_service_pb2, memory_service_pb2_grpc
from memory_svc.component import MemoryParts, build_memory
from tests.auth_helpers import TEST_JWT_SECRET, bearer


class ShiftableClock:
    """Real time plus an offset tests may advance (TTL without sleeping)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class MemoryServer:
    """A running memory server and its insides."""

    address: str
    parts: MemoryParts
    clock: ShiftableClock
    server: GrpcServer


async def start_memory_server(
    pg_url: str, *, index_dir: Path | None = None, **options: Any
) -> MemoryServer:
    """Start a memory server with the real auth interceptor; the caller stops it."""
    settings = Settings.from_env({}, service_name="memory").replace(
        database_url=pg_url, jwt_secret=TEST_JWT_SECRET
    )
    clock = ShiftableClock()
    if "index" not in options:
        options["index_path"] = index_dir or Path(tempfile.mkdtemp(prefix="ciq-mem-index-"))
    parts = build_memory(settings, bank_cache_s=0.0, **options)
    parts.backend.clock = clock
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=[parts.component],
        interceptors=default_interceptors(
            build_auth_interceptor(settings, services=service_names([parts.component]))
        ),
    )
    port = await server.start()
    return MemoryServer(address=f"127.0.0.1:{port}", parts=parts, clock=clock, server=server)


@pytest.fixture(scope="session")
async def memory_server(pg_url: str, service_tmp_path: Path) -> AsyncIterator[MemoryServer]:
    """The shared memory server (sweeper and repair loops slowed down: tests drive them)."""
    running = await start_memory_server(
        pg_url,
        index_dir=service_tmp_path / "memory-index",
        sweep_interval_s=3600.0,
        repair_interval_s=3600.0,
    )
    try:
        yield running
    finally:
        await running.server.stop()


@pytest.fixture
def clock(memory_server: MemoryServer) -> Iterator[ShiftableClock]:
    """The server's clock, reset after the test."""
    try:
        yield memory_server.clock
    finally:
        memory_server.clock.offset = timedelta(0)


@pytest.fixture
async def channel(memory_server: MemoryServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(memory_server.address) as opened:
        yield opened


@pytest.fixture
def memories(channel: grpc.aio.Channel) -> memory_service_pb2_grpc.MemoryServiceStub:
    return memory_service_pb2_grpc.MemoryServiceStub(channel)


@pytest.fixture
def bank_stub(channel: grpc.aio.Channel) -> memory_service_pb2_grpc.MemoryBankServiceStub:
    return memory_service_pb2_grpc.MemoryBankServiceStub(channel)


@pytest.fixture
def operations(channel: grpc.aio.Channel) -> operations_pb2_grpc.OperationsStub:
    return operations_pb2_grpc.OperationsStub(channel)


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tests never see each other's data."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def auth(tenant: str) -> Callable[..., tuple[tuple[str, str], ...]]:
    """Metadata for the test's tenant: ``auth()`` is ADMIN, ``auth("MEMORY_READ")`` less."""

    def make(*permissions: str) -> tuple[tuple[str, str], ...]:
        return bearer(tenant, *permissions)

    return make


async def create(
    stub: memory_service_pb2_grpc.MemoryServiceStub,
    who: tuple[tuple[str, str], ...],
    fact: str,
    scope: dict[str, str] | None = None,
    **fields: Any,
) -> memory_pb2.Memory:
    """CreateMemory with a default scope."""
    request = memory_service_pb2.CreateMemoryRequest(
        scope=scope or {"user_id": "u1"}, fact=fact, **fields
    )
    memory: memory_pb2.Memory = await stub.CreateMemory(request, metadata=who)
    return memory


async def search(
    stub: memory_service_pb2_grpc.MemoryServiceStub,
    who: tuple[tuple[str, str], ...],
    query: str,
    scope: dict[str, str] | None = None,
    **fields: Any,
) -> list[memory_service_pb2.SearchResult]:
    """SearchMemories returning the results."""
    response = await stub.SearchMemories(
        memory_service_pb2.SearchMemoriesRequest(
            scope=scope or {"user_id": "u1"}, search_query=query, **fields
        ),
        metadata=who,
    )
    return list(response.results)


def field_of(error: grpc.aio.AioRpcError) -> str:
    """The ``field`` named by an INVALID_ARGUMENT's ErrorInfo."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.metadata.get("field", ""))
    return ""


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of an error."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""
