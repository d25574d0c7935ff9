"""Sessions: durable appends/s and read latency through gRPC, against ADK on the same Postgres.

Starts a durable embedded PostgreSQL (fsync on: every append is committed to disk) in a temp
dir, a SessionService server in a child process (the real component with JWT auth; per-RPC log
lines at WARNING so the terminal is not the bottleneck; rate limits off), and drives it from
this process over gRPC:

1. ``--clients`` concurrent clients append to ``--sessions`` sessions (client ``i`` owns
   sessions ``i, i+clients, ...``) for ``--seconds`` after a warm-up: appends/s, p50, p95.
   Each append is an agent event with a ~300-character text part and a state delta of one
   session key and one ``user:`` key. The CPU time the server process, this client process
   and Postgres (the postmaster and its children) used during the measured window is printed
   per append, with the whole machine's: on the shared 2-core machine throughput follows the
   total, and the machine's figure shows how much other work ran at the same time.
2. A session is filled with ``--big-events`` events; GetSession with its newest 100 events is
   timed sequentially: p50, p95.
3. The same workload through ADK's ``DatabaseSessionService`` (in-process, no network hop)
   on a database of the same server, run by ``bench/sessions_adk_worker.py`` with the
   interpreter of ``--adk-python`` (default ``.venv-bench/bin/python``), and the ratios.

The server runs on the default gRPC engine (``native``, see :mod:`ciq_runtime.server`);
``--engine grpcio`` measures grpc.aio's server instead.

Run: ``python -m bench.sessions_bench [--seconds 20] [--skip-adk] [--engine grpcio]`` (or
``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import struct_pb2

from ciq_runtime.settings import GRPC_ENGINES, GrpcEngine
from contextiq.sessions.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
TEXT = (
    "Sure - I found three flights from Paris to Lisbon next Tuesday. The earliest leaves at "
    "07:05 and lands at 08:40 local time; the cheapest is the 13:20 departure at 89 EUR with "
    "one checked bag included. Would you like me to hold a seat on one of them, or should I "
    "also look at the options for Wednesday morning?"
)
JWT_SECRET = "bench-secret-0123456789-0123456789"
TENANT = "bench"


# ---------------------------------------------------------------------------------- server


def _serve(database_url: str, engine: str) -> None:
    """Child process: serve SessionService on a free port, print it, run until SIGTERM."""
    from ciq_runtime.auth import build_auth_interceptor
    from ciq_runtime.logging import configure_logging
    from ciq_runtime.server import GrpcServer, default_interceptors, run_until_signal
    from ciq_runtime.settings import Settings
    from sessions_svc.component import SERVICE_NAME, build_component

    configure_logging(service="sessions", level="WARNING", fmt="json")
    settings = Settings.from_env({}, service_name="sessions").replace(
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        rate_limit_per_minute=0,
        tenant_rate_limit_per_minute=0,
    )

    async def main(stop: asyncio.Event) -> None:
        server = GrpcServer(
            host="127.0.0.1",
            port=0,
            components=[build_component(settings)],
            interceptors=default_interceptors(
                build_auth_interceptor(settings, services=[SERVICE_NAME])
            ),
            grace_s=1.0,
            engine=cast(GrpcEngine, engine),
        )
        port = await server.start()
        print(f"PORT {port}", flush=True)
        await stop.wait()
        await server.stop()

    asyncio.run(run_until_signal(main))


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def _machine_busy_s() -> float:
    """CPU seconds spent by the whole machine (all processes, every core) so far."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the server, this client, Postgres and the whole machine."""

    def __init__(self, server_pid: int, postgres_pid: int | None) -> None:
        self._server = server_pid
        self._postgres = postgres_pid
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        postgres = 0.0
        if self._postgres is not None:
            pids = [self._postgres, *_children(self._postgres)]
            postgres = sum(_proc_cpu_s(p) for p in pids)
        return {
            "server": _proc_cpu_s(self._server),
            "client": _proc_cpu_s(os.getpid()),
            "postgres": postgres,
            "machine": _machine_busy_s(),
        }

    def used(self) -> dict[str, float]:
        """CPU seconds of each since the meter was made."""
        end = self._sample()
        return {name: end[name] - self._start[name] for name in end}


def _start_server(database_url: str, engine: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.sessions_bench",
            "--serve",
            database_url,
            "--engine",
            engine,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, int(line.split()[1])


# ---------------------------------------------------------------------------------- client


def _token() -> str:
    import jwt

    now = int(time.time())
    claims = {
        "sub": "bench",
        "org_id": TENANT,
        "permissions": ["ADMIN"],
        "iss": "contextiq",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def _event(client: int, n: int) -> session_pb2.Event:
    delta = struct_pb2.Struct()
    delta.update({"turn": n, "user:last_turn": n})
    return session_pb2.Event(
        author="agent",
        agent_name="assistant",
        invocation_id=f"inv-{client}-{n // 4}",
        content=session_pb2.Content(role="model", parts=[session_pb2.Part(text=TEXT)]),
        actions=session_pb2.EventActions(state_delta=delta),
    )


def _pct(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[94] * 1000


async def _drive(
    port: int, args: argparse.Namespace, *, server_pid: int, postgres_pid: int | None
) -> dict[str, Any]:
    metadata = (("authorization", f"Bearer {_token()}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        sem = asyncio.Semaphore(args.clients)

        async def create(i: int) -> str:
            async with sem:
                request = session_service_pb2.CreateSessionRequest(
                    user_id=f"user-{i % 100}", app_name="bench", agent_id="assistant"
                )
                session: session_pb2.Session = await stub.CreateSession(request, metadata=metadata)
                return session.id

        session_ids = await asyncio.gather(*(create(i) for i in range(args.sessions)))

        latencies: list[float] = []
        errors = 0
        acknowledged = 0  # every successful append, warm-up included
        measuring = False
        stop_at = 0.0

        async def client(c: int) -> None:
            nonlocal errors, acknowledged
            mine = session_ids[c :: args.clients]
            n = 0
            while time.perf_counter() < stop_at:
                request = session_service_pb2.AppendEventRequest(
                    session_id=mine[n % len(mine)], event=_event(c, n)
                )
                started = time.perf_counter()
                try:
                    await stub.AppendEvent(request, metadata=metadata)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - started)
                acknowledged += 1
                n += 1

        stop_at = time.perf_counter() + args.warmup
        await asyncio.gather(*(client(c) for c in range(args.clients)))
        measuring = True
        meter = CpuMeter(server_pid, postgres_pid)
        started = time.perf_counter()
        stop_at = started + args.seconds
        await asyncio.gather(*(client(c) for c in range(args.clients)))
        elapsed = time.perf_counter() - started
        cpu = meter.used()
        p50, p95 = _pct(latencies)

        big = await stub.CreateSession(
            session_service_pb2.CreateSessionRequest(user_id="big-user", app_name="bench"),
            metadata=metadata,
        )
        fill_started = time.perf_counter()
        counter = iter(range(args.big_events))

        async def filler(c: int) -> None:
            # Many writers on one session: the fill also exercises per-session ordering.
            for n in counter:
                await stub.AppendEvent(
                    session_service_pb2.AppendEventRequest(session_id=big.id, event=_event(c, n)),
                    metadata=metadata,
                )

        await asyncio.gather(*(filler(c) for c in range(args.clients)))
        fill_s = time.perf_counter() - fill_started

        get = session_service_pb2.GetSessionRequest(id=big.id, num_recent_events=100)
        samples: list[float] = []
        for i in range(args.gets + 50):
            t0 = time.perf_counter()
            got = await stub.GetSession(get, metadata=metadata)
            if i >= 50:
                samples.append(time.perf_counter() - t0)
            if len(got.events) != 100 or got.event_count != args.big_events:
                raise RuntimeError("GetSession returned the wrong events")
        get_p50, get_p95 = _pct(samples)
    return {
        "appends": len(latencies),
        "elapsed_s": elapsed,
        "append_p50_ms": p50,
        "append_p95_ms": p95,
        "errors": errors,
        "acknowledged": acknowledged + args.big_events,
        "cpu_s": cpu,
        "fill_rate": args.big_events / fill_s,
        "get_p50_ms": get_p50,
        "get_p95_ms": get_p95,
    }


async def _stored_events(dsn: str) -> int:
    """How many events the sessions schema holds (every acknowledged append must be there)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        stored: int = await conn.fetchval("SELECT count(*) FROM sessions.events")
    finally:
        await conn.close()
    return stored


def _run_adk(dsn: str, args: argparse.Namespace) -> dict[str, Any] | None:
    python = Path(args.adk_python)
    if not python.exists():
        print(f"ADK comparison skipped: {python} not found (create it with google-adk)")
        return None
    result = subprocess.run(
        [
            str(python),
            str(ROOT / "bench" / "sessions_adk_worker.py"),
            f"--dsn={dsn}",
            f"--clients={args.clients}",
            f"--sessions={args.sessions}",
            f"--seconds={args.seconds}",
            f"--warmup={args.warmup}",
            f"--big-events={args.big_events}",
            f"--gets={args.gets}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(f"ADK comparison failed:\n{result.stderr[-2000:]}")
        return None
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def _report(ciq: dict[str, Any], adk: dict[str, Any] | None, args: argparse.Namespace) -> None:
    cores = len(os.sched_getaffinity(0))
    print(
        f"cores: {cores} (os.cpu_count={os.cpu_count()}); Postgres durable (fsync on); "
        f"{args.clients} clients over {args.sessions} sessions; {args.seconds:g}s measured; "
        f"gRPC engine {args.engine}"
    )
    rate = ciq["appends"] / ciq["elapsed_s"]
    rows: list[tuple[str, float, float | None, str]] = [
        ("appends/s", rate, None, "higher is better"),
        ("append p50 (ms)", ciq["append_p50_ms"], None, ""),
        ("append p95 (ms)", ciq["append_p95_ms"], None, ""),
        (f"get newest 100 of {args.big_events} p50 (ms)", ciq["get_p50_ms"], None, ""),
        (f"get newest 100 of {args.big_events} p95 (ms)", ciq["get_p95_ms"], None, ""),
    ]
    if adk is not None:
        adk_values = [
            adk["appends"] / adk["elapsed_s"],
            adk["append_p50_ms"],
            adk["append_p95_ms"],
            adk["get_p50_ms"],
            adk["get_p95_ms"],
        ]
        rows = [(n, v, a, note) for (n, v, _, note), a in zip(rows, adk_values, strict=True)]
    print(f"{'':<34}{'ContextIQ':>12}{'ADK DB':>12}{'ratio':>10}")
    for name, value, adk_value, _ in rows:
        if adk_value is None:
            print(f"{name:<34}{value:>12.1f}")
            continue
        # Ratio = how many times better ContextIQ is (throughput up, latency down).
        ratio = value / adk_value if name == "appends/s" else adk_value / value
        print(f"{name:<34}{value:>12.1f}{adk_value:>12.1f}{ratio:>9.1f}x")
    print(
        f"append errors: ContextIQ {ciq['errors']}"
        + (f", ADK {adk['errors']}" if adk is not None else "")
        + f"; filling the big session: {ciq['fill_rate']:.0f} appends/s to one session"
    )
    print(
        f"events stored {ciq['stored']}, appends acknowledged {ciq['acknowledged']}: "
        + (
            "every acknowledged append is stored"
            if ciq["stored"] == ciq["acknowledged"]
            else "MISMATCH"
        )
    )
    cpu = ciq["cpu_s"]
    per_append = {name: 1000 * seconds / ciq["appends"] for name, seconds in cpu.items()}
    others = cpu["machine"] - cpu["server"] - cpu["client"] - cpu["postgres"]
    busy = 100 * cpu["machine"] / ciq["elapsed_s"]
    print(
        "CPU per append (ms): "
        + ", ".join(f"{name} {per_append[name]:.3f}" for name in ("server", "client", "postgres"))
        + f"; whole machine {per_append['machine']:.3f} (busy {busy:.0f}% of {100 * cores}%, "
        f"{100 * others / ciq['elapsed_s']:.0f}% outside the three: kernel threads, interrupts "
        "and any other work on the machine)"
    )
    target_ok = (
        ciq["stored"] == ciq["acknowledged"]
        and rate >= 1500
        and ciq["append_p95_ms"] <= 25
        and ciq["get_p95_ms"] <= 15
    )
    print(
        "targets (>= 1500 appends/s, append p95 <= 25 ms, get p95 <= 15 ms): "
        + ("met" if target_ok else "NOT met")
    )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="SessionService benchmark (vs ADK).")
    parser.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--big-events", type=int, default=10_000)
    parser.add_argument("--gets", type=int, default=500)
    parser.add_argument("--adk-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--skip-adk", action="store_true")
    parser.add_argument(
        "--engine",
        choices=GRPC_ENGINES,
        default="native",
        help="gRPC server implementation of the SessionService (CONTEXTIQ_GRPC_ENGINE)",
    )
    # Known args only: `python -m bench sessions_bench` leaves the module name in argv.
    args, _ = parser.parse_known_args()
    if args.serve:
        _serve(args.serve, args.engine)
        return

    from ciq_runtime.embedded import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="ciq-bench-"))
    postgres = EmbeddedPostgres(data_dir=workdir / "pg", durable=True)
    try:
        handle = postgres.start_sync(timeout=60.0)
        server, port = _start_server(handle.url, args.engine)
        try:
            ciq = asyncio.run(_drive(port, args, server_pid=server.pid, postgres_pid=postgres.pid))
            ciq["stored"] = asyncio.run(_stored_events(handle.dsn))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        adk = None if args.skip_adk else _run_adk(handle.dsn, args)
        _report(ciq, adk, args)
    finally:
        postgres.stop_sync()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
