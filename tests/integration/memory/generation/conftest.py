"""Fixtures of the generation tests: a memory server wired to its own NATS (which tests may
stop and start) and to a real SessionService, a REST gateway in front, and JetStream readers."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import nats
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from nats.js.errors import NotFoundError

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.embedded import EmbeddedNats
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from contextiq.memory.v1 import (
    generation_pb2,
    memory_job_service_pb2_grpc,
    memory_pb2,
    memory_service_pb2_grpc,
)
from contextiq.sessions.v1 import session_pb2, session_service_pb2
from gateway.app import create_app
from gateway.server import GatewayServer
from memory_svc.component import MemoryParts, build_memory
from memory_svc.generation.jobs_stream import JOBS_STREAM
from tests.auth_helpers import TEST_JWT_SECRET, bearer
from tests.integration.memory.conftest import ShiftableClock
from tests.integration.sessions.conftest import SessionsServer, start_server, stop_server

Metadata = tuple[tuple[str, str], ...]
T = TypeVar("T")

GATEWAY_SERVICES = (
    "contextiq.memory.v1.MemoryService",
    "contextiq.memory.v1.MemoryBankService",
    "google.longrunning.Operations",
)


@dataclass
class GenServer:
    """A memory server with generation wired up, and what tests reach into."""

    address: str
    parts: MemoryParts
    server: GrpcServer
    nats: EmbeddedNats
    sessions: SessionsServer


async def start_gen_server(
    pg_url: str, nats_server: EmbeddedNats, sessions: SessionsServer, **settings: Any
) -> GenServer:
    """Start a memory server with NATS and SessionService configured; the caller stops it."""
    config = Settings.from_env({}, service_name="memory").replace(
        database_url=pg_url,
        jwt_secret=TEST_JWT_SECRET,
        nats_url=nats_server.url,
        sessions_addr=sessions.address,
        **settings,
    )
    parts = build_memory(
        config,
        bank_cache_s=0.0,
        index_path=Path(tempfile.mkdtemp(prefix="ciq-gen-index-")),
        sweep_interval_s=3600.0,
        repair_interval_s=3600.0,
        relay_sweep_s=0.5,
    )
    parts.backend.clock = ShiftableClock()
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=[parts.component],
        interceptors=default_interceptors(
            build_auth_interceptor(config, services=service_names([parts.component]))
        ),
    )
    port = await server.start()
    return GenServer(f"127.0.0.1:{port}", parts, server, nats_server, sessions)


@pytest.fixture(scope="session")
def gen_nats(service_tmp_path: Path) -> Any:
    """A NATS server of the generation tests alone (they stop and restart it)."""
    server = EmbeddedNats(store_dir=service_tmp_path / "gen-nats")
    server.start_sync(timeout=30.0)
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture(scope="session")
async def gen_sessions(pg_url: str) -> AsyncIterator[SessionsServer]:
    running = await start_server(pg_url, sweep_interval_s=3600.0)
    try:
        yield running
    finally:
        await stop_server(running)


@pytest.fixture(scope="session")
async def gen_server(
    pg_url: str, gen_nats: EmbeddedNats, gen_sessions: SessionsServer
) -> AsyncIterator[GenServer]:
    """The memory server of the generation tests (no default LLM model configured)."""
    running = await start_gen_server(pg_url, gen_nats, gen_sessions)
    try:
        yield running
    finally:
        await running.server.stop()


@pytest.fixture
async def gen_channel(gen_server: GenServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gen_server.address) as opened:
        yield opened


@pytest.fixture
def mem(gen_channel: grpc.aio.Channel) -> memory_service_pb2_grpc.MemoryServiceStub:
    return memory_service_pb2_grpc.MemoryServiceStub(gen_channel)


@pytest.fixture
def jobs(gen_channel: grpc.aio.Channel) -> memory_job_service_pb2_grpc.MemoryJobServiceStub:
    return memory_job_service_pb2_grpc.MemoryJobServiceStub(gen_channel)


@pytest.fixture
def ops(gen_channel: grpc.aio.Channel) -> operations_pb2_grpc.OperationsStub:
    return operations_pb2_grpc.OperationsStub(gen_channel)


@pytest.fixture
def who(tenant: str) -> Metadata:
    return bearer(tenant)


@pytest.fixture(scope="session")
async def gen_http(gen_server: GenServer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        routes_from=list(GATEWAY_SERVICES),
        upstreams=dict.fromkeys(GATEWAY_SERVICES, gen_server.address),
    )
    server = GatewayServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            yield client
    finally:
        await server.stop()


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 20.0, every: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something truthy, failing after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)


@dataclass
class Published:
    """A job message as stored in the stream."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


async def stream_messages(url: str) -> list[Published]:
    """Every message stored in the jobs stream (read by sequence: nothing is consumed)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(JOBS_STREAM)
        except NotFoundError:
            return []
        found = []
        if not info.state.messages:
            return []
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            try:
                msg = await js.get_msg(JOBS_STREAM, seq)
            except NotFoundError:
                continue
            found.append(
                Published(seq, msg.subject or "", dict(msg.headers or {}), msg.data or b"")
            )
        return found
    finally:
        await nc.close()


async def published_for(url: str, operation: str, *, within: float = 20.0) -> list[Published]:
    """The stream's messages of an operation, once there is at least one."""

    async def probe() -> list[Published]:
        return [m for m in await stream_messages(url) if m.headers.get("Nats-Msg-Id") == operation]

    return await eventually(probe, within=within)


def facts_request(scope: dict[str, str], *facts: str, **fields: Any) -> Any:
    """A GenerateMemories request of inline facts."""
    return generation_pb2.GenerateMemoriesRequest(
        source_type="facts",
        scope=scope,
        facts=[memory_pb2.ExtractedFact(fact=f) for f in facts],
        **fields,
    )


async def new_session(
    sessions: SessionsServer,
    md: Metadata,
    *,
    user_id: str = "u1",
    scope: dict[str, str] | None = None,
) -> session_pb2.Session:
    """Create a session for the tenant of ``md``."""
    created: session_pb2.Session = await sessions.stub.CreateSession(
        session_service_pb2.CreateSessionRequest(user_id=user_id, scope=scope or {}),
        metadata=md,
    )
    return created


def unpack_metadata(operation: operations_pb2.Operation) -> generation_pb2.GenerateMemoriesMetadata:
    metadata = generation_pb2.GenerateMemoriesMetadata()
    assert operation.metadata.Unpack(metadata)
    return metadata


def unpack_response(operation: operations_pb2.Operation) -> generation_pb2.GenerateMemoriesResponse:
    response = generation_pb2.GenerateMemoriesResponse()
    assert operation.response.Unpack(response)
    return response


def op_id() -> str:
    return f"operations/{uuid.uuid4()}"
