"""Fixtures of the gateway's integration tests: the showcase gRPC server and the gateway in
front of it, both on real sockets (port 0), started once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.server import GatewayServer
from tests.integration.gateway.showcase_servicer import ShowcaseBackend, start_backend
from tests.protos.showcase import SERVICE, Showcase, compile_showcase

EXTRA_COMPONENTS = ("postgres", "nats")


@pytest.fixture(scope="session")
def showcase(tmp_path_factory: pytest.TempPathFactory) -> Showcase:
    """The compiled showcase proto."""
    return compile_showcase(Path(tmp_path_factory.mktemp("showcase")))


@pytest.fixture(scope="session")
async def backend(showcase: Showcase) -> AsyncIterator[ShowcaseBackend]:
    """The showcase gRPC server."""
    started = await start_backend(showcase.module, components=EXTRA_COMPONENTS)
    try:
        yield started
    finally:
        await started.server.stop(grace=None)


@pytest.fixture(scope="session")
async def gateway(showcase: Showcase, backend: ShowcaseBackend) -> AsyncIterator[GatewayServer]:
    """The gateway in front of the showcase, on a free port."""
    app = create_app(
        routes_from=[SERVICE],
        upstreams={SERVICE: backend.address},
        health_names=dict.fromkeys(EXTRA_COMPONENTS, backend.address),
        descriptor_sets=[showcase.descriptor_set],
    )
    server = GatewayServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
async def client(gateway: GatewayServer) -> AsyncIterator[httpx.AsyncClient]:
    """A keep-alive HTTP client of the gateway."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10.0) as http:
        yield http
