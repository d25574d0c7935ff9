"""Two real gRPC servers: the sessions process (API keys) and a memory process verifying
keys remotely through it, both with the real auth interceptor on the session's Postgres."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from gateway.app import create_app
from gateway.server import GatewayServer
from memory_svc.component import build_component as build_memory
from sessions_svc.apikeys.component import build_apikeys
from sessions_svc.component import build_component as build_sessions
from tests.auth_helpers import TEST_JWT_SECRET


@dataclass
class AuthStack:
    """Addresses of the two gRPC servers and of the REST gateway in front of them."""

    sessions: str
    memory: str
    http: str


def _settings(pg_url: str, **changes: object) -> Settings:
    # Each stack gets its own data directory: the embedded vector index is a directory one
    # process may open at a time, and tests must never touch ./.contextiq.
    base = Settings.from_env({}, service_name="test").replace(
        database_url=pg_url,
        jwt_secret=TEST_JWT_SECRET,
        data_dir=Path(tempfile.mkdtemp(prefix="ciq-auth-")),
    )
    return base.replace(**changes)


async def start_stack(
    pg_url: str, **changes: object
) -> tuple[AuthStack, list[GrpcServer | GatewayServer]]:
    """Start both servers and a gateway with some settings changed; the caller stops them."""
    settings = _settings(pg_url, **changes)
    keys = build_apikeys(settings)
    sessions_components = [keys.component, build_sessions(settings)]
    sessions = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=sessions_components,
        interceptors=default_interceptors(
            build_auth_interceptor(
                settings, services=service_names(sessions_components), api_keys=keys.verifier
            )
        ),
    )
    sessions_port = await sessions.start()
    memory_settings = settings.replace(sessions_addr=f"127.0.0.1:{sessions_port}", auth_cache_s=0.0)
    memory_component = build_memory(memory_settings)
    memory = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=[memory_component],
        interceptors=default_interceptors(
            build_auth_interceptor(memory_settings, services=service_names([memory_component]))
        ),
    )
    memory_port = await memory.start()
    sessions_addr, memory_addr = f"127.0.0.1:{sessions_port}", f"127.0.0.1:{memory_port}"
    upstreams = dict.fromkeys(service_names(sessions_components), sessions_addr)
    upstreams |= dict.fromkeys(service_names([memory_component]), memory_addr)
    upstreams.pop("contextiq.memory.v1.MemoryJobService")
    gateway = GatewayServer(
        create_app(routes_from=list(upstreams), upstreams=upstreams), host="127.0.0.1", port=0
    )
    await gateway.start()
    return (
        AuthStack(sessions=sessions_addr, memory=memory_addr, http=gateway.url),
        [gateway, memory, sessions],
    )


@pytest.fixture(scope="module")
async def auth_stack(pg_url: str) -> AsyncIterator[AuthStack]:
    stack, servers = await start_stack(pg_url)
    try:
        yield stack
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
async def http(auth_stack: AuthStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_stack.http, timeout=10) as client:
        yield client


@pytest.fixture
async def sessions_channel(auth_stack: AuthStack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(auth_stack.sessions) as channel:
        yield channel


@pytest.fixture
async def memory_channel(auth_stack: AuthStack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(auth_stack.memory) as channel:
        yield channel
