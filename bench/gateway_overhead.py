"""What the REST gateway adds to a call: p50/p95 of direct gRPC vs the same call over HTTP.

An in-process gRPC server answers MemoryService.GetMemory with a fixed, realistic Memory. The
benchmark times N sequential calls (after a warm-up) made (a) directly with grpc.aio and
(b) through the gateway over real HTTP (uvicorn on a free port, an httpx keep-alive client),
and prints both and their difference. Everything shares one process and event loop, so (b)
includes the HTTP client's own cost: the difference is an upper bound of the gateway's. To show
that share, (c) times the same client against the same server stack running an app that
answers at once (the HTTP floor), and the last line subtracts it.

By default the benchmark measures the deployed shape instead: the gRPC server and the gateway
(``python -m gateway``, as in production) each run in their own process, and this process is
only the client, timing (a) grpc.aio straight to the server and (b) httpx to the gateway.
``--in-process`` runs the single-process variant above.

Run: ``python -m bench.gateway_overhead [--calls 2000] [--warmup 200] [--in-process]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import struct_pb2, timestamp_pb2
from starlette.types import Receive, Scope, Send

from contextiq.memory.v1 import memory_pb2, memory_service_pb2
from gateway.app import create_app
from gateway.server import GatewayServer

SERVICE = "contextiq.memory.v1.MemoryService"
METHOD = f"/{SERVICE}/GetMemory"


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


async def run(*, calls: int, warmup: int) -> None:
    """Runs both measurements and prints the table."""
    grpc_server, address = await _start_grpc()
    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: address})
    channel = grpc.aio.insecure_channel(address)
    direct = channel.unary_unary(
        METHOD,
        request_serializer=memory_service_pb2.GetMemoryRequest.SerializeToString,
        response_deserializer=memory_pb2.Memory.FromString,
    )
    request = memory_service_pb2.GetMemoryRequest(id="mem-1")

    async def direct_call() -> None:
        await direct(request, timeout=30.0)

    try:
        async with (
            GatewayServer(app, host="127.0.0.1", port=0) as gateway,
            GatewayServer(_noop_app, host="127.0.0.1", port=0) as floor,
            httpx.AsyncClient(base_url=gateway.url) as client,
            httpx.AsyncClient(base_url=floor.url) as floor_client,
        ):

            async def gateway_call() -> None:
                response = await client.get("/api/v1/memories/mem-1")
                if response.status_code != 200:
                    raise RuntimeError(f"gateway answered {response.status_code}: {response.text}")

            async def floor_call() -> None:
                await floor_client.get("/api/v1/memories/mem-1")

            direct_samples, gateway_samples, floor_samples = await _time(
                [direct_call, gateway_call, floor_call], rounds=calls, warmup=warmup
            )
    finally:
        await channel.close()
        await grpc_server.stop(grace=None)

    direct_p50, direct_p95 = _percentiles(direct_samples)
    gateway_p50, gateway_p95 = _percentiles(gateway_samples)
    floor_p50, floor_p95 = _percentiles(floor_samples)
    print(f"GetMemory, {calls} sequential calls each, interleaved, after {warmup} warm-up (ms)")
    print(f"{'':<24}{'p50':>8}{'p95':>8}")
    print(f"{'direct grpc.aio':<24}{direct_p50:>8.3f}{direct_p95:>8.3f}")
    print(f"{'through the gateway':<24}{gateway_p50:>8.3f}{gateway_p95:>8.3f}")
    print(
        f"{'gateway overhead':<24}{gateway_p50 - direct_p50:>8.3f}{gateway_p95 - direct_p95:>8.3f}"
    )
    print(f"{'HTTP floor (no-op app)':<24}{floor_p50:>8.3f}{floor_p95:>8.3f}")
    net_p50 = gateway_p50 - direct_p50 - floor_p50
    net_p95 = gateway_p95 - direct_p95 - floor_p95
    print(f"{'overhead net of floor':<24}{net_p50:>8.3f}{net_p95:>8.3f}")


async def _serve_upstream(port_file: str) -> None:
    """Child-process mode: serve GetMemory until killed, writing the port to ``port_file``."""
    server, address = await _start_grpc()
    # Written once at start-up, before the server is used: blocking is harmless here.
    Path(port_file).write_text(address.rpartition(":")[2])  # noqa: ASYNC240
    await server.wait_for_termination()


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], env={**os.environ, **env}, stdout=subprocess.DEVNULL
    )


async def run_deployed(*, calls: int, warmup: int) -> None:
    """Server and gateway in their own processes; this process is only the client."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        upstream = _spawn(["-m", "bench.gateway_overhead", "--serve-upstream", str(port_file)], {})
        gateway_proc: subprocess.Popen[bytes] | None = None
        try:
            while not port_file.exists() or not port_file.read_text():
                if upstream.poll() is not None:
                    raise RuntimeError("the upstream server did not start")
                await asyncio.sleep(0.05)
            address = f"127.0.0.1:{port_file.read_text()}"
            http_port = _free_port()
            gateway_proc = _spawn(
                ["-m", "gateway"],
                {
                    "CONTEXTIQ_HTTP_PORT": str(http_port),
                    "CONTEXTIQ_MEMORY_ADDR": address,
                    "CONTEXTIQ_LOG_LEVEL": "WARNING",
                },
            )
            base = f"http://127.0.0.1:{http_port}"
            async with httpx.AsyncClient(base_url=base) as client:
                for _ in range(200):
                    try:
                        if (await client.get("/health")).status_code in (200, 503):
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("the gateway did not start")
                channel = grpc.aio.insecure_channel(address)
                direct = channel.unary_unary(
                    METHOD,
                    request_serializer=memory_service_pb2.GetMemoryRequest.SerializeToString,
                    response_deserializer=memory_pb2.Memory.FromString,
                )
                request = memory_service_pb2.GetMemoryRequest(id="mem-1")

                async def direct_call() -> None:
                    await direct(request, timeout=30.0)

                async def gateway_call() -> None:
                    response = await client.get("/api/v1/memories/mem-1")
                    if response.status_code != 200:
                        raise RuntimeError(f"gateway answered {response.status_code}")

                try:
                    direct_samples, gateway_samples = await _time(
                        [direct_call, gateway_call], rounds=calls, warmup=warmup
                    )
                finally:
                    await channel.close()
        finally:
            for proc in (gateway_proc, upstream):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    direct_p50, direct_p95 = _percentiles(direct_samples)
    gateway_p50, gateway_p95 = _percentiles(gateway_samples)
    print(
        f"GetMemory, {calls} sequential calls each, interleaved, after {warmup} warm-up (ms);"
        " server, gateway (python -m gateway) and client in separate processes"
    )
    print(f"{'':<24}{'p50':>8}{'p95':>8}")
    print(f"{'direct grpc.aio':<24}{direct_p50:>8.3f}{direct_p95:>8.3f}")
    print(f"{'through the gateway':<24}{gateway_p50:>8.3f}{gateway_p95:>8.3f}")
    print(
        f"{'gateway overhead':<24}{gateway_p50 - direct_p50:>8.3f}{gateway_p95 - direct_p95:>8.3f}"
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
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--serve-upstream", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv))
    if args.serve_upstream:
        asyncio.run(_serve_upstream(args.serve_upstream))
    elif args.in_process:
        asyncio.run(run(calls=args.calls, warmup=args.warmup))
    else:
        asyncio.run(run_deployed(calls=args.calls, warmup=args.warmup))


if __name__ == "__main__":
    main(sys.argv[1:])
