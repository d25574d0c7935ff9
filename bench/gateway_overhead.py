"""What the REST gateway adds to a call: p50/p95 of direct gRPC vs the same call over HTTP.

A gRPC server answers MemoryService.GetMemory with a fixed, realistic Memory. The benchmark
times N sequential calls each (after a warm-up), interleaved round by round so that a drift of
the machine's speed weighs on every series alike:

(a) ``direct``: grpc.aio straight to the gRPC server;
(b) ``gateway``: ``GET /api/v1/memories/mem-1`` through the gateway over real HTTP (keep-alive);
(c) ``HTTP floor``: the same HTTP client against the same server stack (``GatewayServer``:
    uvicorn, httptools, the gateway's write coalescing) serving an app that answers ``{}`` at
    once: what one HTTP round trip costs this client on this machine, with no gateway work.

It prints (a), (b), (c), then "gateway adds" two ways: **raw**, (b) - (a), the figure the
target (≤ 1.5 ms p50) is about, and **net of the HTTP floor**, (b) - (a) - (c), what is left
once the client's HTTP round trip (its own parsing, the kernel, uvicorn's) is taken out: the
gateway's routing, transcoding, span, metrics and its upstream call beyond the direct one. (In
those two rows the p95 column is a difference of p95s, not the p95 of a difference: it only
hints at the tail and can even come out negative.) The
raw figure includes the HTTP client's own cost, which is not the gateway's: the default client
is aiohttp (about 0.2 ms per request on this machine); ``--client httpx`` (about 0.5-0.8 ms,
what earlier runs used) shows how much of the raw figure is the client.

By default the benchmark measures the deployed shape: the gRPC server, the gateway
(``python -m gateway``, as in production) and the floor app each run in their own process, and
this process is only the client. ``--in-process`` runs everything in one process and event loop
instead (so (b) and (c) also pay for the server's side in the client's process).

Run: ``python -m bench.gateway_overhead [--calls 2000] [--warmup 200] [--client aiohttp|httpx]
[--in-process]``. The load average is printed first: the numbers are only comparable between
runs on an equally quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
from google.protobuf import struct_pb2, timestamp_pb2
from starlette.types import Receive, Scope, Send

from contextiq.memory.v1 import memory_pb2, memory_service_pb2
from gateway.app import create_app
from gateway.server import GatewayServer

SERVICE = "contextiq.memory.v1.MemoryService"
METHOD = f"/{SERVICE}/GetMemory"
PATH = "/api/v1/memories/mem-1"
CLIENTS = ("aiohttp", "httpx")
_MODULE = "bench.gateway_overhead"

HttpGet = Callable[[str], Awaitable[int]]


def _memory(memory_id: str) -> Any:
    metadata = struct_pb2.Struct()
    metadata.update({"source": "bench", "tags": ["a", "b"]})
    return memory_pb2.Memory(
        id=memory_id,
        scope={"user_id": "u-123", "agent_id": "coordinator"},
        fact="The user prefers window seats on long flights.",
        topic="travel_preferences",
        confidence=0.92,
        metadata=metadata,
        created_at=timestamp_pb2.Timestamp(seconds=1_733_300_000),
        updated_at=timestamp_pb2.Timestamp(seconds=1_733_300_500),
        revision_count=3,
        etag="W/3",
    )


async def _get_memory(request: Any, context: grpc.aio.ServicerContext) -> Any:
    return _memory(request.id)


async def _start_grpc() -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        _get_memory,
        request_deserializer=memory_service_pb2.GetMemoryRequest.FromString,
        response_serializer=memory_pb2.Memory.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"GetMemory": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app that answers ``{}`` at once: the HTTP floor."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


@asynccontextmanager
async def _http_client(kind: str, base_url: str) -> AsyncIterator[HttpGet]:
    """A keep-alive HTTP client of ``base_url`` as ``get(path) -> status``; the body is read."""
    if kind == "aiohttp":
        async with aiohttp.ClientSession(base_url) as session:

            async def aiohttp_get(path: str) -> int:
                async with session.get(path) as response:
                    await response.read()
                    return response.status

            yield aiohttp_get
    else:
        async with httpx.AsyncClient(base_url=base_url) as client:

            async def httpx_get(path: str) -> int:
                return (await client.get(path)).status_code

            yield httpx_get


async def _time(
    calls: list[Callable[[], Awaitable[None]]], *, rounds: int, warmup: int
) -> list[list[float]]:
    """Times each call once per round, interleaved, so that a drift of the machine's speed
    during the run weighs on every series alike."""
    for _ in range(warmup):
        for call in calls:
            await call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for call, series in zip(calls, samples, strict=True):
            started = time.perf_counter()
            await call()
            series.append(time.perf_counter() - started)
    return samples


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[94] * 1000


def _direct_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[None]]:
    direct = channel.unary_unary(
        METHOD,
        request_serializer=memory_service_pb2.GetMemoryRequest.SerializeToString,
        response_deserializer=memory_pb2.Memory.FromString,
    )
    request = memory_service_pb2.GetMemoryRequest(id="mem-1")

    async def direct_call() -> None:
        await direct(request, timeout=30.0)

    return direct_call


def _http_call(get: HttpGet, what: str) -> Callable[[], Awaitable[None]]:
    async def http_call() -> None:
        status = await get(PATH)
        if status != 200:
            raise RuntimeError(f"{what} answered {status}")

    return http_call


def _report(
    samples: list[list[float]], *, calls: int, warmup: int, client: str, shape: str
) -> None:
    """Prints the three series and what the gateway adds, raw and net of the HTTP floor."""
    (direct_p50, direct_p95), (gateway_p50, gateway_p95), (floor_p50, floor_p95) = (
        _percentiles(series) for series in samples
    )
    version = importlib.metadata.version(client)
    print(f"GetMemory, {calls} sequential calls each, interleaved, after {warmup} warm-up (ms)")
    print(f"{shape}; HTTP client: {client} {version}")
    print(f"{'':<40}{'p50':>8}{'p95':>8}")
    rows = [
        ("(a) direct grpc.aio", direct_p50, direct_p95),
        ("(b) through the gateway", gateway_p50, gateway_p95),
        ("(c) HTTP floor (no-op app)", floor_p50, floor_p95),
        ("gateway adds, raw (b - a)", gateway_p50 - direct_p50, gateway_p95 - direct_p95),
        (
            "gateway adds, net of floor (b - a - c)",
            gateway_p50 - direct_p50 - floor_p50,
            gateway_p95 - direct_p95 - floor_p95,
        ),
    ]
    for label, p50, p95 in rows:
        print(f"{label:<40}{p50:>8.3f}{p95:>8.3f}")


def _print_load() -> None:
    one, five, fifteen = os.getloadavg()
    print(f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs", flush=True)


async def run(*, calls: int, warmup: int, client: str) -> None:
    """Single-process variant: gRPC server, gateway, floor app and client share one loop."""
    grpc_server, address = await _start_grpc()
    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: address})
    channel = grpc.aio.insecure_channel(address)
    try:
        async with (
            GatewayServer(app, host="127.0.0.1", port=0) as gateway,
            GatewayServer(_noop_app, host="127.0.0.1", port=0) as floor,
            _http_client(client, gateway.url) as gateway_get,
            _http_client(client, floor.url) as floor_get,
        ):
            samples = await _time(
                [
                    _direct_call(channel),
                    _http_call(gateway_get, "the gateway"),
                    _http_call(floor_get, "the floor app"),
                ],
                rounds=calls,
                warmup=warmup,
            )
    finally:
        await channel.close()
        await grpc_server.stop(grace=None)
    _report(
        samples,
        calls=calls,
        warmup=warmup,
        client=client,
        shape="gRPC server, gateway, floor app and client in one process and event loop",
    )


async def _serve_upstream(port_file: str) -> None:
    """Child-process mode: serve GetMemory until killed, writing the port to ``port_file``."""
    server, address = await _start_grpc()
    # Written once at start-up, before the server is used: blocking is harmless here.
    Path(port_file).write_text(address.rpartition(":")[2])  # noqa: ASYNC240
    await server.wait_for_termination()


async def _serve_floor(port_file: str) -> None:
    """Child-process mode: serve the no-op app with the gateway's server stack until killed."""
    server = GatewayServer(_noop_app, host="127.0.0.1", port=0)
    await server.start()
    Path(port_file).write_text(str(server.port))  # noqa: ASYNC240
    await server.wait()


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )


def _read_port(port_file: Path) -> int | None:
    text = port_file.read_text() if port_file.exists() else ""
    return int(text) if text else None


async def _port_of(proc: subprocess.Popen[bytes], port_file: Path, what: str) -> int:
    """Waits for a child process to write the port it listens on."""
    while (port := _read_port(port_file)) is None:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        await asyncio.sleep(0.05)
    return port


async def _wait_http(get: HttpGet, what: str) -> None:
    for _ in range(200):
        try:
            if await get("/health") in (200, 404, 503):
                return
        except (OSError, aiohttp.ClientError, httpx.TransportError):
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


async def run_deployed(*, calls: int, warmup: int, client: str) -> None:
    """Server, gateway and floor app in their own processes; this process is only the client."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            upstream_file, floor_file = Path(tmp) / "upstream", Path(tmp) / "floor"
            procs.append(_spawn(["-m", _MODULE, "--serve-upstream", str(upstream_file)], {}))
            procs.append(_spawn(["-m", _MODULE, "--serve-floor", str(floor_file)], {}))
            address = f"127.0.0.1:{await _port_of(procs[0], upstream_file, 'the gRPC server')}"
            floor_port = await _port_of(procs[1], floor_file, "the floor app")
        http_port = _free_port()
        procs.append(
            _spawn(
                ["-m", "gateway"],
                {
                    "CONTEXTIQ_HTTP_PORT": str(http_port),
                    "CONTEXTIQ_MEMORY_ADDR": address,
                    "CONTEXTIQ_LOG_LEVEL": "WARNING",
                },
            )
        )
        channel = grpc.aio.insecure_channel(address)
        try:
            async with (
                _http_client(client, f"http://127.0.0.1:{http_port}") as gateway_get,
                _http_client(client, f"http://127.0.0.1:{floor_port}") as floor_get,
            ):
                await _wait_http(gateway_get, "the gateway")
                await _wait_http(floor_get, "the floor app")
                samples = await _time(
                    [
                        _direct_call(channel),
                        _http_call(gateway_get, "the gateway"),
                        _http_call(floor_get, "the floor app"),
                    ],
                    rounds=calls,
                    warmup=warmup,
                )
        finally:
            await channel.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    _report(
        samples,
        calls=calls,
        warmup=warmup,
        client=client,
        shape=(
            "gRPC server, gateway (python -m gateway), floor app and this client"
            " each in their own process"
        ),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main(argv: Sequence[str] = ()) -> None:
    """Entry point; ``python -m bench`` calls it without arguments (the defaults)."""
    parser = argparse.ArgumentParser(description="REST gateway overhead over direct gRPC.")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--serve-upstream", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.serve_upstream:
        asyncio.run(_serve_upstream(args.serve_upstream))
    elif args.serve_floor:
        asyncio.run(_serve_floor(args.serve_floor))
    else:
        _print_load()
        runner = run if args.in_process else run_deployed
        asyncio.run(runner(calls=args.calls, warmup=args.warmup, client=args.client))


if __name__ == "__main__":
    main(sys.argv[1:])
