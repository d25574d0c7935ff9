"""The transactional outbox of generation jobs, and the relay that publishes it to JetStream.

GenerateMemories inserts the operation and its outbox row in one transaction
(:func:`enqueue`), so a job exists exactly when its operation does. The :class:`Relay` (a
background task of every memory replica) takes due rows with ``FOR UPDATE SKIP LOCKED`` --
replicas never publish the same row at once -- publishes each with ``Nats-Msg-Id`` = the
operation name, and deletes the row only after JetStream's PubAck. When NATS is down the rows
stay and are retried with backoff; a publish that reached the stream but whose PubAck was lost
is published again and JetStream drops the duplicate (same Msg-Id inside the duplicate
window; past it the worker's idempotency on the operation name still holds).

Latency: the request handler publishes its job right after its commit
(:meth:`Relay.dispatch`; the row is deleted after the PubAck), so a job normally reaches NATS
within a millisecond or two; a periodic sweep picks up anything left (rows of a replica
that died before publishing, rows in backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from opentelemetry import propagate
from sqlalchemy import Interval, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ciq_runtime.db import transaction
from contextiq.extraction.v1 import jobs_pb2
from memory_svc.generation.tables import generation_outbox
from memory_svc.operations import OperationStore

__all__ = ["GENERATE_SUBJECT", "LEARN_SUBJECT", "Enqueued", "Relay", "create_with_job", "enqueue"]

log = logging.getLogger(__name__)

#: Subject of memory generation jobs (``extraction_svc.jobs.GENERATE_MEMORIES_SUBJECT``).
GENERATE_SUBJECT: Final = "contextiq.jobs.memory.generate"
#: Subject of procedural learning jobs (``extraction_svc.jobs.LEARN_PROCEDURAL_SUBJECT``).
LEARN_SUBJECT: Final = "contextiq.jobs.procedural.learn"
#: The job message of each subject the outbox carries.
JOB_TYPES: Final[dict[str, type[Message]]] = {
    GENERATE_SUBJECT: jobs_pb2.GenerateMemoriesJob,
    LEARN_SUBJECT: jobs_pb2.LearnProceduralJob,
}
_BATCH: Final = 64
_BACKOFF_S: Final = (0.5, 30.0)

ob = generation_outbox

# Built once (a reused statement keeps its SQL cache key).
_ENQUEUE: Final = insert(ob).values(
    {
        **{
            c: bindparam(f"p_{c}", type_=ob.c[c].type)
            for c in ("operation_name", "tenant_id", "subject", "payload", "headers", "created_at")
        },
        "attempts": 0,
        # The database's clock schedules the relay: replicas' clocks may differ. A job the
        # request publishes itself is left to the relay only after a grace period.
        "next_attempt_at": func.now() + bindparam("p_grace", type_=Interval()),
    }
)
#: How long the relay leaves a job to the request that committed it (Relay.dispatch) before
#: publishing it itself: only a replica gone, or NATS lost, between commit and PubAck.
DISPATCH_GRACE: Final = timedelta(seconds=5)
_DUE: Final = (
    select(ob)
    .where(ob.c.next_attempt_at <= func.now())
    .order_by(ob.c.id)
    .limit(_BATCH)
    .with_for_update(skip_locked=True)
)

Publisher = Callable[[str, Message, str, dict[str, str]], Awaitable[None]]


@dataclass(frozen=True)
class Enqueued:
    """A job added to the outbox: what :meth:`Relay.dispatch` publishes once it committed."""

    subject: str
    job: jobs_pb2.GenerateMemoriesJob | jobs_pb2.LearnProceduralJob
    headers: dict[str, str]


_PUBLISHED: Final = delete(ob).where(ob.c.operation_name == bindparam("p_name"))


async def enqueue(
    session: AsyncSession,
    *,
    job: jobs_pb2.GenerateMemoriesJob | jobs_pb2.LearnProceduralJob,
    now: datetime,
    subject: str = GENERATE_SUBJECT,
) -> Enqueued:
    """Add the job (published on ``subject``) to the outbox inside the caller's transaction.

    The current trace context (the accepting request's) is stored with it and travels as
    message headers, so the worker's spans join the request's trace. The caller hands the
    returned job to :meth:`Relay.dispatch` after its commit, so the relay waits
    :data:`DISPATCH_GRACE` before it publishes the row itself.
    """
    headers: dict[str, str] = {}
    propagate.inject(headers)
    await session.execute(
        _ENQUEUE,
        {
            "p_operation_name": job.operation_name,
            "p_tenant_id": job.tenant_id,
            "p_subject": subject,
            "p_payload": job.SerializeToString(),
            "p_headers": headers,
            "p_created_at": now,
            "p_grace": DISPATCH_GRACE,
        },
    )
    return Enqueued(subject=subject, job=job, headers=headers)


async def create_with_job(
    sessions: async_sessionmaker[AsyncSession],
    *,
    tenant_id: str,
    kind: str,
    bank_id: str,
    metadata: Message,
    request: Message,
    request_id: str | None,
    now: datetime,
    job: Callable[[str], jobs_pb2.GenerateMemoriesJob | jobs_pb2.LearnProceduralJob],
    subject: str = GENERATE_SUBJECT,
) -> tuple[Any, Enqueued | None]:
    """Commit an operation and the outbox row of its job in one transaction.

    ``job`` builds the job from the new operation's name. With a ``request_id`` the tenant
    used before, the earlier operation's row comes back and nothing is enqueued. Otherwise the
    caller hands the returned :class:`Enqueued` to :meth:`Relay.dispatch` (the row waits
    :data:`DISPATCH_GRACE` for it).

    Returns:
        The operation's row, and the enqueued job (None when the operation existed).
    """
    async with transaction(sessions) as session:
        row, inserted = await OperationStore.create_once(
            session,
            tenant_id=tenant_id,
            kind=kind,
            bank_id=bank_id,
            metadata=metadata,
            request=request,
            request_id=request_id,
            now=now,
        )
        enqueued = None
        if inserted:
            enqueued = await enqueue(session, job=job(row.name), now=now, subject=subject)
    return row, enqueued


def job_of(
    *, operation_name: str, tenant_id: str, request: Any, now: datetime
) -> jobs_pb2.GenerateMemoriesJob:
    """The job message of an accepted request."""
    enqueued = timestamp_pb2.Timestamp()
    enqueued.FromDatetime(now)
    return jobs_pb2.GenerateMemoriesJob(
        operation_name=operation_name, tenant_id=tenant_id, request=request, enqueued_at=enqueued
    )


def _backoff(attempts: int) -> timedelta:
    first, cap = _BACKOFF_S
    return timedelta(seconds=min(cap, first * 2 ** min(attempts, 16)))


class Relay:
    """Publishes outbox rows to JetStream; one per memory process."""

    def __init__(
        self,
        *,
        sessions: Callable[[], async_sessionmaker[AsyncSession]],
        publish: Publisher,
        connected: Callable[[], bool],
        sweep_interval_s: float = 2.0,
    ) -> None:
        """Create the relay (started with :meth:`run` as a background task).

        Args:
            sessions: Returns the Postgres session factory.
            publish: Publishes one job ``(subject, job, msg_id, headers)`` and returns once
                JetStream acknowledged it; raises otherwise.
            connected: Whether NATS is connected now (no publish is tried while it is not).
            sweep_interval_s: Pause between sweeps when nobody wakes the relay.
        """
        self._sessions = sessions
        self._publish = publish
        self._connected = connected
        self._sweep_interval_s = sweep_interval_s
        self._wake = asyncio.Event()
        self._dispatching: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Publish soon: a job was just committed."""
        self._wake.set()

    def dispatch(self, enqueued: Enqueued) -> None:
        """Publish a just-committed job now, from the request that committed it.

        Saves the relay's wake-up and read of the row on the way to the worker. The row stays
        the source of truth: it is deleted after the PubAck, and the relay leaves it alone for
        :data:`DISPATCH_GRACE`, then publishes whatever is left.
        """
        if not self._connected():
            return  # the relay publishes it once NATS is back
        task = asyncio.create_task(self._publish_now(enqueued))
        self._dispatching.add(task)
        task.add_done_callback(self._dispatching.discard)

    async def _publish_now(self, enqueued: Enqueued) -> None:
        name = enqueued.job.operation_name
        try:
            await self._publish(enqueued.subject, enqueued.job, name, dict(enqueued.headers))
        except Exception as exc:  # noqa: BLE001 - the row stays: the relay publishes it
            log.info("publishing %s at once failed (%r); the relay retries", name, exc)
            return
        try:
            async with transaction(self._sessions()) as session:
                await session.execute(_PUBLISHED, {"p_name": name})
        except Exception:  # published: a later sweep publishes it again, JetStream drops that
            log.warning("removing the published outbox row of %s failed", name, exc_info=True)

    async def run(self) -> None:
        """Relay until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sweep_interval_s)
            self._wake.clear()
            try:
                while await self.publish_due() == _BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                # Postgres unreachable, for instance: the rows are safe, try again later.
                log.warning("outbox relay pass failed", exc_info=True)

    async def publish_due(self) -> int:
        """Publish one batch of due rows; returns how many rows were taken."""
        if not self._connected():
            return 0
        async with transaction(self._sessions()) as session:
            rows = (await session.execute(_DUE)).all()
            if not rows:
                return 0
            outcomes = await asyncio.gather(
                *(self._publish_row(row) for row in rows), return_exceptions=True
            )
            published = []
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, asyncio.CancelledError):
                        raise outcome
                    log.warning(
                        "publishing %s failed (attempt %d): %r",
                        row.operation_name,
                        row.attempts + 1,
                        outcome,
                        extra={"operation": row.operation_name},
                    )
                    await session.execute(
                        update(ob)
                        .where(ob.c.id == row.id)
                        .values(
                            attempts=ob.c.attempts + 1,
                            next_attempt_at=func.now() + _backoff(row.attempts),
                            last_error=repr(outcome)[:500],
                        )
                    )
                else:
                    published.append(row.id)
            if published:
                await session.execute(delete(ob).where(ob.c.id.in_(published)))
        return len(rows)

    async def _publish_row(self, row: Any) -> None:
        job = JOB_TYPES.get(row.subject, jobs_pb2.GenerateMemoriesJob).FromString(row.payload)
        await self._publish(row.subject, job, row.operation_name, dict(row.headers or {}))

    async def pending(self) -> int:
        """Rows not yet published (tests, health)."""
        async with self._sessions()() as session:
            return len((await session.execute(select(ob.c.id))).all())
