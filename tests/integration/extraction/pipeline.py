"""The whole generation pipeline in this process: sessions, memory and the extraction worker,
each a real gRPC server on a free port with JWT auth, sharing a NATS and a database of their
own (so no other test's outbox relay or worker touches these jobs)."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from contextiq.memory.v1 import (
    generation_pb2,
    memory_pb2,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from contextiq.sessions.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc
from extraction_svc.component import ExtractionParts, build_extraction
from memory_svc.component import MemoryParts, build_memory
from sessions_svc.component import build_component as build_sessions
from tests.auth_helpers import TEST_JWT_SECRET, bearer
from tests.llm_server import MODEL, ScriptedLLM


async def fresh_database(pg_url: str, pg_dsn: str) -> str:
    """Create an empty database in the test cluster and return its SQLAlchemy URL."""
    name = f"ciq_worker_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(pg_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def base_settings(db_url: str, nats_url: str, service: str, **changes: Any) -> Settings:
    """Settings every server of the pipeline shares."""
    return (
        Settings.from_env({}, service_name=service)
        .replace(
            database_url=db_url,
            nats_url=nats_url,
            jwt_secret=TEST_JWT_SECRET,
            rate_limit_per_minute=0,
            tenant_rate_limit_per_minute=0,
            shutdown_grace_s=2.0,
        )
        .replace(**changes)
    )


async def serve(settings: Settings, component: Any, port: int = 0) -> GrpcServer:
    """A real server with the auth interceptor, on ``port`` (0: a free one)."""
    server = GrpcServer(
        host="127.0.0.1",
        port=port,
        components=[component],
        interceptors=default_interceptors(
            build_auth_interceptor(settings, services=service_names([component]))
        ),
        grace_s=1.0,
    )
    await server.start()
    return server


@dataclass
class Pipeline:
    """Running servers and client stubs."""

    db_url: str
    nats_url: str
    llm: ScriptedLLM | None
    model: str | None
    worker_options: dict[str, Any]
    sessions_server: GrpcServer | None = None
    memory_server: GrpcServer | None = None
    memory_parts: MemoryParts | None = None
    memory_port: int = 0
    sessions_port: int = 0
    worker_server: GrpcServer | None = None
    worker: ExtractionParts | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    index_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ciq-wk-")))

    @property
    def sessions_addr(self) -> str:
        return f"127.0.0.1:{self.sessions_port}"

    @property
    def memory_addr(self) -> str:
        return f"127.0.0.1:{self.memory_port}"

    async def start_sessions(self) -> None:
        """Start (or restart, on the same port) the sessions server."""
        settings = base_settings(self.db_url, self.nats_url, "sessions")
        self.sessions_server = await serve(settings, build_sessions(settings), self.sessions_port)
        assert self.sessions_server.port is not None
        self.sessions_port = self.sessions_server.port

    async def stop_sessions(self) -> None:
        if self.sessions_server is not None:
            await self.sessions_server.stop()
            self.sessions_server = None

    async def start_memory(self) -> None:
        settings = base_settings(
            self.db_url,
            self.nats_url,
            "memory",
            sessions_addr=self.sessions_addr,
            llm_model=self.model,
        )
        parts = build_memory(
            settings,
            index_path=self.index_dir,
            bank_cache_s=0.0,
            sweep_interval_s=3600.0,
            repair_interval_s=3600.0,
            relay_sweep_s=0.5,
        )
        self.memory_parts = parts
        self.memory_server = await serve(settings, parts.component, self.memory_port)
        assert self.memory_server.port is not None
        self.memory_port = self.memory_server.port

    async def stop_memory(self) -> None:
        if self.memory_server is not None:
            await self.memory_server.stop()
            self.memory_server = None

    async def start_worker(self, **options: Any) -> ExtractionParts:
        opts = {**self.worker_options, **options}
        settings = base_settings(
            self.db_url,
            self.nats_url,
            "extraction",
            memory_addr=opts.pop("memory_addr", self.memory_addr),
            sessions_addr=self.sessions_addr,
            llm_model=self.model,
            llm_api_base=self.llm.api_base if self.llm else None,
            llm_api_key="test-key",
            llm_timeout_s=opts.pop("llm_timeout_s", 5.0),
            llm_max_attempts=opts.pop("llm_max_attempts", 2),
            **opts,
        )
        parts = build_extraction(settings)
        self.worker = parts
        self.worker_server = await serve(settings, parts.component)
        return parts

    async def stop_worker(self) -> None:
        if self.worker_server is not None:
            await self.worker_server.stop()
            self.worker_server = None
            self.worker = None

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.stop_worker()
        await self.stop_memory()
        await self.stop_sessions()

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        self.channels.append(channel)
        return channel

    # ----------------------------------------------------------------------- client side

    def memories(self) -> memory_service_pb2_grpc.MemoryServiceStub:
        return memory_service_pb2_grpc.MemoryServiceStub(self.channel(self.memory_addr))

    def banks(self) -> memory_service_pb2_grpc.MemoryBankServiceStub:
        return memory_service_pb2_grpc.MemoryBankServiceStub(self.channel(self.memory_addr))

    def operations(self) -> operations_pb2_grpc.OperationsStub:
        return operations_pb2_grpc.OperationsStub(self.channel(self.memory_addr))

    def sessions(self) -> session_service_pb2_grpc.SessionServiceStub:
        return session_service_pb2_grpc.SessionServiceStub(self.channel(self.sessions_addr))

    async def generate(self, tenant: str, **fields: Any) -> operations_pb2.Operation:
        request = generation_pb2.GenerateMemoriesRequest(**fields)
        operation: operations_pb2.Operation = await self.memories().GenerateMemories(
            request, metadata=bearer(tenant)
        )
        return operation

    async def wait_done(
        self,
        tenant: str,
        name: str,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> operations_pb2.Operation:
        """Poll GetOperation until done (a deadline, not a sleep-and-hope)."""
        stub = self.operations()
        deadline = time.monotonic() + timeout
        while True:
            operation: operations_pb2.Operation = await stub.GetOperation(
                operations_pb2.GetOperationRequest(name=name), metadata=bearer(tenant)
            )
            if operation.done:
                return operation
            if time.monotonic() > deadline:
                raise AssertionError(f"operation {name} not done after {timeout}s: {operation}")
            await asyncio.sleep(0.05)

    async def list_memories(self, tenant: str) -> list[memory_pb2.Memory]:
        """Every live memory of the tenant."""
        reply = await self.memories().ListMemories(
            memory_service_pb2.ListMemoriesRequest(page_size=100), metadata=bearer(tenant)
        )
        return list(reply.memories)

    async def create_session(self, tenant: str, user_id: str = "u1") -> session_pb2.Session:
        session: session_pb2.Session = await self.sessions().CreateSession(
            session_service_pb2.CreateSessionRequest(user_id=user_id), metadata=bearer(tenant)
        )
        return session

    async def append(self, tenant: str, session_id: str, author: str, text: str) -> str:
        event = session_pb2.Event(
            author=author,
            content=session_pb2.Content(role=author, parts=[session_pb2.Part(text=text)]),
        )
        stored: session_pb2.Event = await self.sessions().AppendEvent(
            session_service_pb2.AppendEventRequest(session_id=session_id, event=event),
            metadata=bearer(tenant),
        )
        return str(stored.id)


def response_of(operation: operations_pb2.Operation) -> generation_pb2.GenerateMemoriesResponse:
    assert not operation.HasField("error"), operation.error
    response = generation_pb2.GenerateMemoriesResponse()
    assert operation.response.Unpack(response)
    return response


def metadata_of(operation: operations_pb2.Operation) -> generation_pb2.GenerateMemoriesMetadata:
    metadata = generation_pb2.GenerateMemoriesMetadata()
    assert operation.metadata.Unpack(metadata)
    return metadata


@asynccontextmanager
async def running_pipeline(
    db_url: str,
    nats_url: str,
    llm: ScriptedLLM | None,
    *,
    model: str | None = MODEL,
    **worker_options: Any,
) -> AsyncIterator[Pipeline]:
    """Sessions, memory and worker servers; stopped on exit."""
    pipeline = Pipeline(
        db_url=db_url, nats_url=nats_url, llm=llm, model=model, worker_options=worker_options
    )
    try:
        await pipeline.start_sessions()
        await pipeline.start_memory()
        await pipeline.start_worker()
        yield pipeline
    finally:
        await pipeline.stop()
