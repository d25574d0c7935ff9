"""Wiring of memory generation into the memory component: NATS, relay, listener, clients.

NATS is optional for the memory process: without ``NATS_URL`` (or while NATS is down) it
still accepts generations, whose jobs wait in the outbox; once connected the relay publishes
them. The connection is (re)tried in the background so a NATS outage never blocks start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncEngine

from ciq_runtime.component_kit import NatsResource
from ciq_runtime.nats import publish_proto
from ciq_runtime.settings import Settings
from memory_svc.backend import Backend
from memory_svc.generation.accept import Acceptor
from memory_svc.generation.apply import Applier
from memory_svc.generation.lifecycle import Lifecycle, OperationWaiter
from memory_svc.generation.outbox import Relay
from memory_svc.generation.progress import RecentOperations
from memory_svc.generation.requests import SessionLookup
from memory_svc.generation.servicer import Generation
from memory_svc.generation.vectors import RecentVectors

__all__ = ["JOBS_STREAM", "JOBS_SUBJECTS", "build"]

log = logging.getLogger(__name__)

#: The JetStream stream of jobs, as ``extraction_svc.jobs`` declares it (same configuration:
#: whichever service starts first creates it, the other finds it identical).
JOBS_STREAM: Final = "CONTEXTIQ_JOBS"
JOBS_SUBJECTS: Final = ["contextiq.jobs.>"]
_PUBLISH_TIMEOUT_S: Final = 5.0
_CONNECT_RETRY_S: Final = 2.0

HealthCheck = Callable[[], Awaitable[None]]


def build(
    settings: Settings,
    backend: Backend,
    *,
    engine: Callable[[], AsyncEngine],
    relay_sweep_s: float = 2.0,
) -> tuple[
    Generation,
    Callable[[], list[asyncio.Task[None]]],
    dict[str, HealthCheck],
    Callable[[], Awaitable[None]],
]:
    """Build the generation parts of a memory process.

    Args:
        settings: Process settings (``nats_url``, ``sessions_addr``, ``llm_model``).
        backend: The memory service's shared resources.
        engine: Returns the Postgres engine (open once the component started).
        relay_sweep_s: Pause between outbox sweeps.

    Returns:
        The parts; a function starting their background tasks (called from ``on_start``);
        health checks to add to the component's; and the stop function (``on_stop``).
    """
    bus = (
        NatsResource(
            settings, client_name="contextiq-memory", stream=JOBS_STREAM, subjects=JOBS_SUBJECTS
        )
        if settings.nats_url
        else None
    )

    def connected() -> bool:
        if bus is None:
            return False
        try:
            return bool(bus.client.is_connected)
        except RuntimeError:
            return False

    async def publish(subject: str, job: Message, msg_id: str, headers: dict[str, str]) -> None:
        assert bus is not None
        await publish_proto(
            bus.jetstream,
            subject,
            job,
            msg_id=msg_id,
            headers=headers,
            timeout=_PUBLISH_TIMEOUT_S,
        )

    relay = (
        Relay(
            sessions=lambda: backend.sessions,
            publish=publish,
            connected=connected,
            sweep_interval_s=relay_sweep_s,
        )
        if bus is not None
        else None
    )
    waiter = OperationWaiter(engine)
    sessions = SessionLookup(settings.sessions_addr)
    vectors = RecentVectors(backend)
    operations = RecentOperations()
    generation = Generation(
        acceptor=Acceptor(
            backend,
            sessions=sessions,
            default_model=settings.llm_model or "",
            dispatch=relay.dispatch if relay is not None else (lambda _: None),
            remember=operations.put,
        ),
        applier=Applier(backend, vectors),
        lifecycle=Lifecycle(backend, waiter),
        waiter=waiter,
        sessions=sessions,
        relay=relay,
        vectors=vectors,
        operations=operations,
    )
    if bus is None:
        log.warning(
            "NATS_URL is not set: memory generations are accepted but their jobs wait in the "
            "outbox until a memory replica with NATS publishes them"
        )

    async def keep_connected() -> None:
        assert bus is not None
        while True:
            try:
                await bus.start()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: keep serving, retry
                log.warning("NATS not reachable yet (%s); retrying", exc)
                with contextlib.suppress(Exception):
                    await bus.stop()
                await asyncio.sleep(_CONNECT_RETRY_S)

    async def relay_when_connected() -> None:
        assert relay is not None
        await keep_connected()
        relay.wake()
        await relay.run()

    def start_tasks() -> list[asyncio.Task[None]]:
        tasks = [asyncio.create_task(waiter.run(), name="operation listener")]
        if relay is not None:
            tasks.append(asyncio.create_task(relay_when_connected(), name="outbox relay"))
        return tasks

    async def stop() -> None:
        await sessions.close()
        if bus is not None:
            with contextlib.suppress(Exception):
                await bus.stop()

    health: dict[str, HealthCheck] = {"nats": bus.ping} if bus is not None else {}
    return generation, start_tasks, health, stop
