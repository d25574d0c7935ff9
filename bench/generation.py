"""Memory generation: request→done latency and throughput of the whole job pipeline.

The deployed shape on one machine: a durable embedded PostgreSQL and a nats-server with
JetStream, and the sessions, memory and extraction services each in its own process
(``python -m sessions_svc|memory_svc|extraction_svc``, real JWT auth between them). The LLM is
the scripted OpenAI-compatible server of the tests, reached through LiteLLM, answering every
call after ``--llm-delay`` seconds (300 ms by default): extraction returns two facts per
conversation, consolidation keeps new facts (CREATE) and marks repeats NOOP.

1. ``--sessions`` sessions (100) of 6 events each are created; 8 generations on 4 other sessions
   warm the services up (the first jobs load LiteLLM and the embedding model).
2. Capacity: ``--requests`` GenerateMemories requests (500, spread round-robin over the
   sessions, source = the whole session) are sent at once (32 requests in flight); throughput
   is operations done / (last done - first sent).
3. Latency: another ``--requests`` requests are sent open-loop at ``--rate`` requests/s (25, the
   target throughput). Each operation's ``completed_at`` (server clock, same machine) minus the
   moment its request was sent gives request→done: p50 and p95.
4. The pipeline's own overhead: ``--overhead-jobs`` (30) generations run one at a time with an
   instant LLM. Their request→done counts the LiteLLM client and the HTTP exchange with the
   scripted server as overhead; the worker's own measure of time spent inside model calls
   (``contextiq_llm_request_duration_seconds`` on its /metrics) is printed too, and subtracted
   for the overhead net of model calls.

Run: ``python -m bench.generation [--requests 500] [--rate 25] [--concurrency N]`` (or
``make bench BENCH=generation``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ciq_runtime.embedded import EmbeddedNats, EmbeddedPostgres
from contextiq.memory.v1 import (
    generation_pb2,
    memory_service_pb2_grpc,
)
from contextiq.sessions.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc
from tests.auth_helpers import make_jwt
from tests.helpers import free_port
from tests.llm_server import MODEL, Reply, ScriptedLLM

ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = "bench-generation-secret-0123456789abcdef"
TENANT = "bench-tenant"
SERVICES = ("sessions", "memory", "extraction")
_FACT_INDEXES = re.compile(r"<new_facts>\n(.*?)\n</new_facts>", re.S)
_EXISTING = re.compile(r"<existing_memories>\n(.*?)\n</existing_memories>", re.S)
_CONVERSATION = re.compile(r"<conversation>\n(.*?)\n</conversation>", re.S)


@dataclass
class LlmScript:
    """Answers of the scripted LLM for the benchmark, and how many calls it served."""

    delay_s: float
    calls: dict[str, int] = field(default_factory=lambda: {"extract": 0, "consolidate": 0})

    def __call__(self, body: dict[str, Any]) -> Reply:
        schema = body.get("response_format", {}).get("json_schema", {}).get("name", "")
        user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
        if schema == "extracted_facts":
            self.calls["extract"] += 1
            turns = [json.loads(line) for line in _section(_CONVERSATION, user).splitlines()]
            user_turns = [t for t in turns if t["author"].startswith("user")] or turns
            facts = [
                {
                    "fact": f"The user said: {turn['text'][:120]}",
                    "topic": "USER_PREFERENCES",
                    "confidence": 0.9,
                    "source_event_ids": [turn["event_id"]],
                }
                for turn in user_turns[:2]
            ]
            return Reply.json({"facts": facts}, delay_s=self.delay_s)
        self.calls["consolidate"] += 1
        new_facts = json.loads(_section(_FACT_INDEXES, user) or "[]")
        existing = json.loads(_section(_EXISTING, user) or "[]")
        by_fact = {memory["fact"]: memory["id"] for memory in existing}
        actions = []
        for fact in new_facts:
            known = by_fact.get(fact["fact"])
            actions.append(
                {
                    "action": "NOOP" if known else "CREATE",
                    "memory_id": known or "",
                    "fact": fact["fact"],
                    "topic": fact["topic"],
                    "confidence": fact["confidence"],
                    "reason": "already known" if known else "new",
                    "fact_indexes": [fact["index"]],
                }
            )
        return Reply.json({"actions": actions}, delay_s=self.delay_s)


def _section(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(1) if found else ""


def _token() -> str:
    return make_jwt(
        TENANT,
        "SESSION_READ",
        "SESSION_WRITE",
        "MEMORY_READ",
        "MEMORY_WRITE",
        subject="bench",
        secret=JWT_SECRET,
        ttl_s=7200,
    )


def _spawn(service: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / f"{service}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", f"{service}_svc"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def _wait_serving(target: str, service: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {service} service did not become ready at {target}")
            await asyncio.sleep(0.2)


def _event(n: int, session: int) -> session_pb2.Event:
    author = "user" if n % 2 == 0 else "agent"
    texts = [
        f"I am planning trip number {session}; I prefer aisle seats and vegetarian meals.",
        "Noted. Any preference for the hotel?",
        f"Quiet rooms please, I work remotely as engineer #{session}.",
        "Understood, I will look for quiet rooms.",
        f"My budget is {1000 + session * 10} euros and I travel with my dog.",
        "Great, pet-friendly places only then.",
    ]
    return session_pb2.Event(
        author=author,
        invocation_id=f"inv-{session}-{n // 2}",
        content=session_pb2.Content(
            role="user" if author == "user" else "model",
            parts=[session_pb2.Part(text=texts[n % len(texts)])],
        ),
    )


def _stamp(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    """The stack and the client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ciq-bench-gen-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = {service: free_port() for service in SERVICES}
        self.metadata = (("authorization", f"Bearer {_token()}"),)
        self.users = 0
        self.worker_metrics_port = free_port()

    async def llm_seconds(self) -> float:
        """Seconds the worker has spent inside model calls (LiteLLM included), from /metrics."""
        async with httpx.AsyncClient() as client:
            page = await client.get(f"http://127.0.0.1:{self.worker_metrics_port}/metrics")
        page.raise_for_status()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in page.text.splitlines()
            if line.startswith("contextiq_llm_request_duration_seconds_sum")
        )

    async def start(self, llm: ScriptedLLM) -> None:
        """Start Postgres, NATS and the three services."""
        self.pg = EmbeddedPostgres(data_dir=self.tmp / "pg", durable=True)
        pg_url = (await asyncio.to_thread(self.pg.start_sync, timeout=90.0)).url
        self.nats = EmbeddedNats(store_dir=self.tmp / "nats", port=free_port())
        nats_url = await asyncio.to_thread(self.nats.start_sync, timeout=30.0)
        base = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONTEXTIQ_")},
            "DATABASE_URL": pg_url,
            "NATS_URL": nats_url,
            "CONTEXTIQ_JWT_SECRET": JWT_SECRET,
            "CONTEXTIQ_LLM_MODEL": MODEL,
            "CONTEXTIQ_LLM_API_BASE": llm.api_base,
            "CONTEXTIQ_LLM_API_KEY": "bench-key",
            "CONTEXTIQ_LOG_LEVEL": self.args.log_level,
            "CONTEXTIQ_RATE_LIMIT_PER_MINUTE": "0",
            "CONTEXTIQ_TENANT_RATE_LIMIT_PER_MINUTE": "0",
            "CONTEXTIQ_SESSIONS_ADDR": f"127.0.0.1:{self.ports['sessions']}",
            "CONTEXTIQ_MEMORY_ADDR": f"127.0.0.1:{self.ports['memory']}",
            "CONTEXTIQ_EXTRACTION_ADDR": f"127.0.0.1:{self.ports['extraction']}",
        }
        for name in ("QDRANT_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            base.pop(name, None)
        if self.args.concurrency:
            base["CONTEXTIQ_WORKER_CONCURRENCY"] = str(self.args.concurrency)
        for service in SERVICES:
            env = {
                **base,
                "CONTEXTIQ_GRPC_PORT": str(self.ports[service]),
                "CONTEXTIQ_DATA_DIR": str(self.tmp / service),
            }
            if service == "extraction":
                env["CONTEXTIQ_METRICS_PORT"] = str(self.worker_metrics_port)
            self.procs.append(_spawn(service, env, self.tmp))
            # Each service migrates its own schema at start; one at a time keeps it simple.
            await _wait_serving(f"127.0.0.1:{self.ports[service]}", service)

    def stop(self) -> None:
        """Stop everything and remove the temp dir."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for server in (getattr(self, "nats", None), getattr(self, "pg", None)):
            if server is not None:
                server.stop_sync()
        if self.args.keep_logs:
            print(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def sessions(self, count: int) -> list[str]:
        """Create sessions with six events each (users numbered from where the last call ended)."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.ports['sessions']}") as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)

            async def one(i: int) -> str:
                session = await stub.CreateSession(
                    session_service_pb2.CreateSessionRequest(
                        user_id=f"user-{i}", app_name="bench", agent_id="travel-agent"
                    ),
                    metadata=self.metadata,
                )
                for n in range(6):
                    await stub.AppendEvent(
                        session_service_pb2.AppendEventRequest(
                            session_id=session.id, event=_event(n, i)
                        ),
                        metadata=self.metadata,
                    )
                return str(session.id)

            ids: list[str] = []
            first = self.users
            self.users += count
            for start in range(first, first + count, 10):
                batch = range(start, min(first + count, start + 10))
                ids.extend(await asyncio.gather(*(one(i) for i in batch)))
            return ids

    async def generate(
        self, session_ids: list[str], requests: int, rate: float | None, sequential: bool
    ) -> list[tuple[float, operations_pb2.Operation]]:
        """Send the requests (open loop at ``rate``, all at once when None, or one at a time)
        and wait for all."""
        target = f"127.0.0.1:{self.ports['memory']}"
        async with grpc.aio.insecure_channel(target) as channel:
            memory = memory_service_pb2_grpc.MemoryServiceStub(channel)
            operations = operations_pb2_grpc.OperationsStub(channel)
            sent: list[tuple[float, str]] = []

            async def send(i: int) -> None:
                request = generation_pb2.GenerateMemoriesRequest(
                    source_type="session", source_reference=session_ids[i % len(session_ids)]
                )
                at = time.time()
                operation = await memory.GenerateMemories(
                    request, metadata=self.metadata, timeout=30
                )
                sent.append((at, operation.name))

            async def wait(name: str) -> operations_pb2.Operation:
                while True:
                    operation = await operations.WaitOperation(
                        operations_pb2.WaitOperationRequest(name=name, timeout={"seconds": 30}),
                        metadata=self.metadata,
                        timeout=40,
                    )
                    if operation.done:
                        return operation

            if sequential:
                for i in range(requests):
                    await send(i)
                    await wait(sent[-1][1])
            elif rate is None:
                in_flight = asyncio.Semaphore(32)

                async def bounded(i: int) -> None:
                    async with in_flight:
                        await send(i)

                await asyncio.gather(*(bounded(i) for i in range(requests)))
            else:
                tasks = []
                started = time.perf_counter()
                for i in range(requests):
                    delay = started + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(send(i)))
                await asyncio.gather(*tasks)
            # One waiter at a time: request→done comes from the operation's own completed_at,
            # so how the client waits does not change the figures, and 500 open waiters would
            # load the memory service the benchmark measures.
            done = [await wait(name) for _, name in sent]
            return [(at, operation) for (at, _), operation in zip(sent, done, strict=True)]


def _summary(results: list[tuple[float, operations_pb2.Operation]]) -> dict[str, Any]:
    latencies, finished, failed = [], [], 0
    for sent_at, operation in results:
        metadata = generation_pb2.GenerateMemoriesMetadata()
        operation.metadata.Unpack(metadata)
        if operation.HasField("error") and operation.error.code != 0:
            failed += 1
        completed = _stamp(metadata.completed_at) if metadata.HasField("completed_at") else 0.0
        if completed:
            latencies.append(completed - sent_at)
            finished.append(completed)
    first_sent = min(at for at, _ in results)
    span = max(finished) - first_sent if finished else float("nan")
    return {
        "count": len(results),
        "failed": failed,
        "p50": _pct(latencies, 0.5) if latencies else float("nan"),
        "p95": _pct(latencies, 0.95) if latencies else float("nan"),
        "mean": statistics.fmean(latencies) if latencies else float("nan"),
        "throughput": len(finished) / span if finished else 0.0,
    }


async def _run(args: argparse.Namespace) -> None:
    script = LlmScript(delay_s=args.llm_delay)
    llm = await ScriptedLLM(fallback=script).start()
    bench = Bench(args)
    try:
        print(f"starting postgres, nats and 3 services in {bench.tmp} ...", flush=True)
        await bench.start(llm)
        session_ids = await bench.sessions(args.sessions)
        print(f"{len(session_ids)} sessions x 6 events created", flush=True)
        # Warm-up, not measured: the first jobs load LiteLLM and the embedding model.
        warm_ids = await bench.sessions(4)
        await bench.generate(warm_ids, 8, args.rate, sequential=False)
        script.calls = {"extract": 0, "consolidate": 0}

        burst = _summary(await bench.generate(session_ids, args.requests, None, False))
        script.calls = {"extract": 0, "consolidate": 0}
        paced = _summary(await bench.generate(session_ids, args.requests, args.rate, False))
        llm_calls = sum(script.calls.values())
        llm_wait = llm_calls * args.llm_delay / max(1, paced["count"])
        script.calls = {"extract": 0, "consolidate": 0}
        script.delay_s = 0.0
        llm_before = await bench.llm_seconds()
        quiet = _summary(
            await bench.generate(session_ids, args.overhead_jobs, args.rate, sequential=True)
        )
        in_llm = (await bench.llm_seconds() - llm_before) / max(1, quiet["count"])

        print()
        print(f"{'generate, LLM answering after':<40}{args.llm_delay * 1000:>8.0f} ms")
        print(
            f"{'capacity: requests sent at once':<40}{burst['count']:>8}  over "
            f"{len(session_ids)} sessions, failed {burst['failed']}"
        )
        print(f"{'  throughput (jobs/s)':<40}{burst['throughput']:>8.1f}")
        print(
            f"{'latency: requests sent at':<40}{args.rate:>8g}/s  ({paced['count']} requests, "
            f"failed {paced['failed']}, throughput {paced['throughput']:.1f} jobs/s)"
        )
        print(f"{'  request→done p50 / p95 (s)':<40}{paced['p50']:>8.3f}{paced['p95']:>8.3f}")
        print(f"{'  LLM calls per job':<40}{llm_calls / max(1, paced['count']):>8.2f}")
        print(
            f"{'  mean request→done - LLM wait (ms)':<40}{(paced['mean'] - llm_wait) * 1000:>8.1f}"
        )
        print(
            f"{'overhead per job p50 / p95 (ms)':<40}"
            f"{quiet['p50'] * 1000:>8.1f}{quiet['p95'] * 1000:>8.1f}"
            f"  ({quiet['count']} jobs one at a time, instant LLM, failed {quiet['failed']})"
        )
        print(
            f"{'  of which inside model calls (ms/job)':<40}{in_llm * 1000:>8.1f}"
            f"  (LiteLLM + HTTP to the instant scripted server)"
        )
        net_ms = (quiet["mean"] - in_llm) * 1000
        print(f"{'  overhead net of model calls (ms, mean)':<40}{net_ms:>8.1f}")
        print(
            "targets: p95 ≤ 2 s, throughput ≥ 25 jobs/s, overhead ≤ 30 ms "
            f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs)"
        )
    finally:
        await llm.stop()
        bench.stop()


def main() -> None:
    """Entry point of ``python -m bench.generation`` and ``make bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=25.0, help="requests/s of the latency phase")
    parser.add_argument("--llm-delay", type=float, default=0.3)
    parser.add_argument("--overhead-jobs", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=0, help="worker concurrency")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--log-level", default="WARNING", help="log level of the services")
    # Known args only: `python -m bench generation` leaves the module name in argv.
    args, _ = parser.parse_known_args()
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
