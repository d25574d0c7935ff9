"""ADK's ``DatabaseSessionService`` under the sessions benchmark's workload.

Run by :mod:`bench.sessions_bench` with the interpreter of a separate virtualenv holding
``google-adk`` (its pins conflict with ours: it needs opentelemetry <= 1.44). It imports nothing
from this repository and prints one JSON object with its numbers on stdout.

The workload mirrors the ContextIQ side exactly: ``--sessions`` sessions of app ``bench`` spread
over 100 users, ``--clients`` concurrent clients each owning the sessions ``i, i+clients, ...``
(ADK rejects appends from a stale session object, so two clients never share a session), each
append an agent event with a ~300-character text part and a state delta of one session key and
one ``user:`` key. Then ``get_session`` with the newest 100 events of a ``--big-events`` session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import asyncpg
from google.adk.events import Event, EventActions  # type: ignore[import-untyped, import-not-found, unused-ignore]
from google.adk.sessions import DatabaseSessionService  # type: ignore[import-untyped, import-not-found, unused-ignore]
from google.adk.sessions.base_session_service import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    GetSessionConfig,
)
from google.genai import types  # type: ignore[import-untyped, import-not-found, unused-ignore]

TEXT = (
    "Sure - I found three flights from Paris to Lisbon next Tuesday. The earliest leaves at "
    "07:05 and lands at 08:40 local time; the cheapest is the 13:20 departure at 89 EUR with "
    "one checked bag included. Would you like me to hold a seat on one of them, or should I "
    "also look at the options for Wednesday morning?"
)
APP = "bench"


def _event(client: int, n: int) -> Any:
    return Event(
        author="assistant",
        invocation_id=f"inv-{client}-{n // 4}",
        content=types.Content(role="model", parts=[types.Part(text=TEXT)]),
        actions=EventActions(state_delta={"turn": n, "user:last_turn": n}),
    )


def _pct(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[94] * 1000


async def _ensure_database(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _db = dsn.rpartition("/")
    return f"{base}/{name}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dsn = await _ensure_database(args.dsn, "adk_bench")
    service = DatabaseSessionService(
        db_url=dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
        pool_size=args.clients,
        max_overflow=0,
    )
    sem = asyncio.Semaphore(args.clients)

    async def create(i: int) -> Any:
        async with sem:
            return await service.create_session(app_name=APP, user_id=f"user-{i % 100}")

    sessions = await asyncio.gather(*(create(i) for i in range(args.sessions)))

    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = 0.0

    async def client(c: int) -> None:
        nonlocal errors
        mine = sessions[c :: args.clients]
        n = 0
        while time.perf_counter() < stop_at:
            session = mine[n % len(mine)]
            started = time.perf_counter()
            try:
                await service.append_event(session, _event(c, n))
            except Exception:
                errors += 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - started)
            n += 1

    stop_at = time.perf_counter() + args.warmup
    await asyncio.gather(*(client(c) for c in range(args.clients)))
    measuring = True
    started = time.perf_counter()
    stop_at = started + args.seconds
    await asyncio.gather(*(client(c) for c in range(args.clients)))
    elapsed = time.perf_counter() - started
    p50, p95 = _pct(latencies)

    # The 10,000-event session, seeded in one transaction with ADK's own storage rows (what
    # append_event writes; appending them one by one would take minutes and is not measured).
    big = await service.create_session(app_name=APP, user_id="big-user")
    schema = service._get_schema_classes()
    async with service.database_session_factory() as db:
        base = time.time() - args.big_events
        rows = []
        for n in range(args.big_events):
            event = _event(0, n)
            event.id = str(uuid.uuid4())
            event.timestamp = base + n
            rows.append(schema.StorageEvent.from_event(big, event))
        db.add_all(rows)
        await db.commit()
    config = GetSessionConfig(num_recent_events=100)
    samples: list[float] = []
    for i in range(args.gets + 50):
        t0 = time.perf_counter()
        got = await service.get_session(
            app_name=APP, user_id="big-user", session_id=big.id, config=config
        )
        if i >= 50:
            samples.append(time.perf_counter() - t0)
        if got is None or len(got.events) != 100:
            raise RuntimeError("ADK returned the wrong events")
    get_p50, get_p95 = _pct(samples)
    await service.close()
    return {
        "appends": len(latencies),
        "elapsed_s": elapsed,
        "append_p50_ms": p50,
        "append_p95_ms": p95,
        "errors": errors,
        "get_p50_ms": get_p50,
        "get_p95_ms": get_p95,
    }


def main() -> None:
    """Command-line entry point (called by bench.sessions_bench)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True, help="postgresql:// DSN of the bench database")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--big-events", type=int, default=10_000)
    parser.add_argument("--gets", type=int, default=300)
    print(json.dumps(asyncio.run(run(parser.parse_args())), sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
