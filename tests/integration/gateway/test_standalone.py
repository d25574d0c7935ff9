"""``python -m gateway`` as a process, and the listening socket's TCP settings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from gateway.server import GatewayServer, _bind
from tests.helpers import free_port
from tests.integration.gateway.showcase_servicer import ShowcaseBackend

_START_TIMEOUT_S = 30.0


@asynccontextmanager
async def _standalone(env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _wait_until_serving(url: str, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=url) as http:
        while True:
            assert process.returncode is None, "the gateway exited"
            try:
                await http.get("/metrics")
                return
            except httpx.TransportError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def test_routes_only_the_configured_services(backend: ShowcaseBackend) -> None:
    port = free_port()
    env = {"CONTEXTIQ_HTTP_PORT": str(port), "CONTEXTIQ_SESSIONS_ADDR": backend.address}
    env_without = dict.fromkeys(("CONTEXTIQ_MEMORY_ADDR", "CONTEXTIQ_EXTRACTION_ADDR"), "")
    async with _standalone({**env, **env_without}) as process:
        url = f"http://127.0.0.1:{port}"
        await _wait_until_serving(url, process)
        async with httpx.AsyncClient(base_url=url) as http:
            # The showcase server does not implement SessionService: the call is routed there.
            session = await http.get("/api/v1/sessions/s1")
            memory = await http.get("/api/v1/memories/m1")
            health = await http.get("/health")

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=_START_TIMEOUT_S) == 0

    assert session.status_code == 501
    assert session.json()["error"]["code"] == "UNIMPLEMENTED"
    assert memory.status_code == 404
    # CONTEXTIQ_SESSIONS_ADDR routes the sessions process's services: sessions and API keys.
    assert health.json()["components"] == {
        "contextiq.auth.v1.ApiKeyService": "SERVICE_UNKNOWN",
        "contextiq.sessions.v1.SessionService": "SERVICE_UNKNOWN",
    }


async def test_port_in_use_exits_with_one_line(gateway: GatewayServer) -> None:
    async with _standalone({"CONTEXTIQ_HTTP_PORT": str(gateway.port)}) as process:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=_START_TIMEOUT_S)

    assert process.returncode == 1
    assert stderr.decode().strip().splitlines()[-1] == (
        f"gateway: cannot listen on 127.0.0.1:{gateway.port}: the port is already in use"
    )


async def test_accepted_connections_have_nodelay() -> None:
    # Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to every response.
    listener = _bind("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class _Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(_Protocol, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        nodelay = await asyncio.wait_for(accepted, timeout=10)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()

    assert nodelay
