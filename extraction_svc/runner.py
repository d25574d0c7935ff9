"""A generic JetStream job runner: one durable pull consumer per job type, N jobs at once.

A job type is a :class:`JobSpec`: a subject, the protobuf message it carries, a handler and a
way to report a job failed for good. The runner owns everything else (STYLE.md, "Workers"):

- **Explicit acks.** A message is acked only after its handler returned.
- **Heartbeats.** While a handler runs, ``in_progress()`` is sent every third of ``ack_wait``,
  so a slow job (a slow model) is not redelivered to another worker; a worker that dies stops
  heartbeating and JetStream redelivers after ``ack_wait``.
- **Retries with backoff.** A handler raising :class:`RetryJob` (or anything unexpected) gets
  ``nak(delay)`` with the backoff of that delivery, up to ``max_deliver`` deliveries.
- **Permanent failures.** :class:`FailJob` reports the job failed (its operation gets the
  error) and acks: retrying cannot change the outcome.
- **Poison.** A message that does not decode, or that the spec's validator rejects, is
  ``term()``-ed at once and dead-lettered.
- **Dead letters.** Poison messages and jobs whose last delivery failed are recorded in
  ``extraction.dead_letters`` (see :mod:`extraction_svc.dead_letters`) and their operation is
  reported failed.
- **Graceful stop.** Fetching stops; running jobs get ``grace_s`` to finish, then are
  cancelled and ``nak()``-ed so another worker takes them at once.

Every job passes through :meth:`JobRunner._process`: the one place where a job starts, ends
or fails, reported to a :class:`JobObserver` (logs by default; metrics and tracing plug in
there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import nats.errors
import nats.js.errors
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from ciq_runtime import metrics, telemetry
from ciq_runtime.errors import ContextIQError, to_status
from ciq_runtime.logging import annotate_request, request_log_scope
from ciq_runtime.nats import MessageDecodeError, decode_proto, ensure_pull_consumer
from extraction_svc.dead_letters import DeadLetterStore

__all__ = [
    "Delivery",
    "FailJob",
    "InvalidJob",
    "JobObserver",
    "JobRunner",
    "JobSpec",
    "LoggingObserver",
    "RetryJob",
    "RunnerConfig",
]

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Message)


class RetryJob(Exception):  # noqa: N818 - a signal to the runner, not an error of the caller
    """A transient failure: deliver the job again later (until ``max_deliver``)."""

    def __init__(self, status: status_pb2.Status, *, delay_s: float | None = None) -> None:
        """Create the signal.

        Args:
            status: What went wrong (kept on the dead letter if this was the last delivery).
            delay_s: Redeliver after this long instead of the configured backoff.
        """
        super().__init__(status.message)
        self.status = status
        self.delay_s = delay_s


class FailJob(Exception):  # noqa: N818 - a signal to the runner
    """A permanent failure: report the job failed with ``status`` and ack it."""

    def __init__(self, status: status_pb2.Status) -> None:
        """Create the signal with the status the job's operation ends with."""
        super().__init__(status.message)
        self.status = status


class InvalidJob(ValueError):  # noqa: N818 - named like RetryJob / FailJob
    """A decoded job that can never run (missing required fields): poison."""


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job: what the handler may want to know about its message."""

    subject: str
    attempt: int
    max_deliver: int
    headers: Mapping[str, str]
    stream_sequence: int | None
    published_at: datetime | None

    @property
    def last(self) -> bool:
        """True on the last delivery JetStream will make."""
        return self.max_deliver > 0 and self.attempt >= self.max_deliver


@dataclass(frozen=True)
class JobSpec(Generic[_M]):
    """One job type.

    Attributes:
        name: Durable consumer name (letters, digits, ``-``, ``_``); also the job type in logs.
        subject: Subject the jobs are published on.
        message_type: The protobuf message of a job.
        handle: Runs a job; returns normally when done, raises :class:`RetryJob` /
            :class:`FailJob` otherwise. Must be idempotent: a job may be delivered again
            after its work was done (a lost ack).
        fail: Reports a job failed for good (its operation gets ``status``); returns whether
            the report was recorded. Called for :class:`FailJob`, after the last delivery and
            for invalid jobs.
        validate: Raises :class:`InvalidJob` for a decoded job that can never run.
        ready: Awaited before the first fetch (e.g. until the services the handler calls
            answer), so jobs are not burnt while the process is still starting.
        describe: Identity fields of a job for logs and dead letters (``operation_name``,
            ``tenant_id``).
    """

    name: str
    subject: str
    message_type: type[_M]
    handle: Callable[[_M, Delivery], Awaitable[None]]
    fail: Callable[[_M, Delivery, status_pb2.Status], Awaitable[bool]]
    validate: Callable[[_M], None] | None = None
    ready: Callable[[], Awaitable[None]] | None = None
    describe: Callable[[_M], dict[str, str]] = field(default=lambda _job: {})


@dataclass(frozen=True)
class RunnerConfig:
    """How the runner consumes (from :class:`~ciq_runtime.settings.Settings`)."""

    stream: str
    concurrency: int = 8
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    backoff_s: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0)
    job_timeout_s: float = 900.0
    grace_s: float = 10.0
    fetch_timeout_s: float = 2.0

    def consumer_backoff(self) -> list[float] | None:
        """Backoff list as JetStream accepts it: fewer entries than ``max_deliver``."""
        if self.max_deliver <= 1 or not self.backoff_s:
            return None
        return list(self.backoff_s[: self.max_deliver - 1])

    def delay_after(self, attempt: int) -> float:
        """Redelivery delay after delivery number ``attempt`` failed."""
        if not self.backoff_s:
            return self.ack_wait_s
        return self.backoff_s[min(attempt, len(self.backoff_s)) - 1]


class JobObserver(Protocol):
    """Where job starts and ends are reported (logs, metrics, traces)."""

    def started(self, job_type: str, delivery: Delivery, ids: Mapping[str, str]) -> None:
        """A delivery began."""

    def finished(
        self,
        job_type: str,
        delivery: Delivery,
        ids: Mapping[str, str],
        *,
        outcome: str,
        seconds: float,
        error: str = "",
    ) -> None:
        """A delivery ended with ``outcome``: ``done``, ``retry``, ``failed``, ``dead_letter``,
        ``poison`` or ``requeued`` (stopped)."""


class LoggingObserver:
    """The default observer: one log line per delivery end."""

    def started(self, job_type: str, delivery: Delivery, ids: Mapping[str, str]) -> None:
        """Log at debug level."""
        log.debug(
            "job %s started (attempt %d)",
            job_type,
            delivery.attempt,
            extra={**ids, "attempt": delivery.attempt},
        )

    def finished(
        self,
        job_type: str,
        delivery: Delivery,
        ids: Mapping[str, str],
        *,
        outcome: str,
        seconds: float,
        error: str = "",
    ) -> None:
        """Log at info (done), warning (retry, requeued) or error (failed, dead letter)."""
        level = {
            "done": logging.INFO,
            "retry": logging.WARNING,
            "requeued": logging.WARNING,
        }.get(outcome, logging.ERROR)
        log.log(
            level,
            "job %s %s after %.3fs (attempt %d/%d)%s",
            job_type,
            outcome,
            seconds,
            delivery.attempt,
            delivery.max_deliver,
            f": {error}" if error else "",
            extra={**ids, "attempt": delivery.attempt, "outcome": outcome},
        )


def status_of(exc: BaseException) -> status_pb2.Status:
    """A ``google.rpc.Status`` for any exception (ContextIQ errors keep their details)."""
    if isinstance(exc, RetryJob | FailJob):
        return exc.status
    if isinstance(exc, ContextIQError):
        return to_status(exc)
    if isinstance(exc, TimeoutError):
        return status_pb2.Status(
            code=code_pb2.DEADLINE_EXCEEDED, message="the job ran longer than its timeout"
        )
    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"the job failed: {summary[:500]}")


class JobRunner(Generic[_M]):
    """Consumes one job type with a durable pull consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: JobSpec[_M],
        config: RunnerConfig,
        *,
        dead_letters: DeadLetterStore,
        observer: JobObserver | None = None,
    ) -> None:
        """Create the runner; nothing happens until :meth:`start`."""
        self._js = js
        self._spec = spec
        self._config = config
        self._dead_letters = dead_letters
        self._observer: JobObserver = observer or LoggingObserver()
        self._loop_task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._inflight: dict[asyncio.Task[None], Msg] = {}
        self._stopping = asyncio.Event()

    @property
    def inflight(self) -> int:
        """Jobs running now."""
        return len(self._inflight)

    async def start(self) -> None:
        """Create or update the durable consumer and start fetching in the background."""
        await self._ensure_consumer()
        self._loop_task = asyncio.create_task(self._run(), name=f"jobs-{self._spec.name}")
        self._backlog_task = asyncio.create_task(
            self._watch_backlog(), name=f"jobs-{self._spec.name}-backlog"
        )

    async def _ensure_consumer(self) -> None:
        config = self._config
        await ensure_pull_consumer(
            self._js,
            stream=config.stream,
            durable=self._spec.name,
            filter_subject=self._spec.subject,
            ack_wait_s=config.ack_wait_s,
            max_deliver=config.max_deliver,
            backoff_s=config.consumer_backoff(),
            max_ack_pending=max(1000, config.concurrency),
        )

    async def stop(self) -> None:
        """Stop fetching, let running jobs finish for ``grace_s``, then requeue the rest."""
        self._stopping.set()
        if self._backlog_task is not None:
            self._backlog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._backlog_task
            self._backlog_task = None
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        running = list(self._inflight)
        if running:
            _, pending = await asyncio.wait(running, timeout=self._config.grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)

    async def _run(self) -> None:
        if self._spec.ready is not None:
            await self._spec.ready()
        pause = 0.0
        while not self._stopping.is_set():
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any one failure
                # NATS unreachable while binding, the consumer deleted, a client bug: start
                # over (re-binding, re-creating the consumer) instead of going quiet.
                pause = min(10.0, max(0.5, pause * 2))
                log.warning(
                    "consuming %s jobs failed (%r); starting over in %.1fs",
                    self._spec.name,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
                with contextlib.suppress(Exception):
                    await self._ensure_consumer()

    async def _consume(self) -> None:
        sub = await self._js.pull_subscribe_bind(
            durable=self._spec.name, stream=self._config.stream
        )
        pause, failures = 0.0, 0
        try:
            while not self._stopping.is_set():
                free = self._config.concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await sub.fetch(batch=free, timeout=self._config.fetch_timeout_s)
                except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.FetchTimeoutError):
                    pause = 0.0
                    continue
                except (nats.errors.Error, OSError) as exc:
                    # NATS restarting or unreachable (the client reconnects by itself), or the
                    # consumer deleted under us (JetStream answers 503 then, too).
                    failures += 1
                    pause = min(5.0, max(0.2, pause * 2))
                    log.warning(
                        "fetching %s jobs failed (%r); retrying in %.1fs",
                        self._spec.name,
                        exc,
                        pause,
                    )
                    await asyncio.sleep(pause)
                    if failures % 3 == 0:
                        # Idempotent: a no-op while the consumer exists.
                        with contextlib.suppress(Exception):
                            await self._ensure_consumer()
                    continue
                pause, failures = 0.0, 0
                for msg in messages:
                    task = asyncio.create_task(self._process(msg))
                    self._inflight[task] = msg
                    task.add_done_callback(self._forget)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _watch_backlog(self) -> None:
        """Publish the consumer's pending and unacked counts (the queue's backlog) to metrics."""
        while True:
            try:
                await metrics.observe_consumer(
                    self._js, stream=self._config.stream, consumer=self._spec.name
                )
            except Exception as exc:  # noqa: BLE001 - NATS away: keep the last values
                log.debug("reading the backlog of %s failed: %r", self._spec.name, exc)
            await asyncio.sleep(_BACKLOG_INTERVAL_S)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task of %s crashed", self._spec.name, exc_info=task.exception())

    def _delivery(self, msg: Msg) -> Delivery:
        attempt, sequence, published = 1, None, None
        with contextlib.suppress(Exception):  # not a JetStream message: defaults
            meta = msg.metadata
            attempt = int(meta.num_delivered or 1)
            sequence = int(meta.sequence.stream) if meta.sequence else None
            published = meta.timestamp
        return Delivery(
            subject=msg.subject,
            attempt=attempt,
            max_deliver=self._config.max_deliver,
            headers=dict(msg.headers or {}),
            stream_sequence=sequence,
            published_at=published,
        )

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(0.1, self._config.ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - NATS away: the next beat may go through
                log.debug("heartbeat of %s failed: %r", self._spec.name, exc)

    async def _process(self, msg: Msg) -> None:
        """Run one delivery inside a CONSUMER span continuing the publisher's trace.

        The job's ids (``describe``) join the span's attributes and every log line of the job.
        """
        with (
            telemetry.consume_span(msg.subject, msg.headers, job=self._spec.name),
            request_log_scope(),
        ):
            await self._process_delivery(msg)

    async def _process_delivery(self, msg: Msg) -> None:
        """Run one delivery to its end: ack, nak, term or dead letter."""
        spec = self._spec
        delivery = self._delivery(msg)
        started = time.monotonic()
        ids: dict[str, str] = {}
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        outcome, error = "done", ""
        try:
            try:
                job = decode_proto(msg, spec.message_type)
                ids = spec.describe(job)
                annotate_request(**ids)
                if spec.validate is not None:
                    spec.validate(job)
            except (MessageDecodeError, InvalidJob) as exc:
                outcome, error = "poison", str(exc)
                status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc))
                reported = False
                if isinstance(exc, InvalidJob):
                    reported = await self._report_failed(job, delivery, status)
                await self._dead_letter(msg, delivery, "poison", status, ids, reported)
                await msg.term()
                return
            self._observer.started(spec.name, delivery, ids)
            _job_started(spec.name, delivery)
            try:
                async with asyncio.timeout(self._config.job_timeout_s):
                    await spec.handle(job, delivery)
            except FailJob as exc:
                outcome, error = "failed", exc.status.message
                if await self._report_failed(job, delivery, exc.status):
                    await msg.ack()
                    return
                # The failure could not be recorded (service down): try again later.
                await self._retry_or_give_up(msg, job, delivery, exc.status, ids, None)
                outcome = "retry" if not delivery.last else "dead_letter"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = status_of(exc)
                if not isinstance(exc, RetryJob):
                    log.exception("job %s raised unexpectedly", spec.name, extra=ids)
                outcome = "retry" if not delivery.last else "dead_letter"
                error = status.message
                delay = exc.delay_s if isinstance(exc, RetryJob) else None
                await self._retry_or_give_up(msg, job, delivery, status, ids, delay)
            else:
                await msg.ack()
        except asyncio.CancelledError:
            outcome = "requeued"
            # Stopping: hand the job back at once; it restarts from scratch elsewhere.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        finally:
            heartbeat.cancel()
            _job_finished(spec.name, outcome, time.monotonic() - started, error)
            self._observer.finished(
                spec.name,
                delivery,
                ids,
                outcome=outcome,
                seconds=time.monotonic() - started,
                error=error,
            )

    async def _retry_or_give_up(
        self,
        msg: Msg,
        job: _M,
        delivery: Delivery,
        status: status_pb2.Status,
        ids: Mapping[str, str],
        delay_s: float | None,
    ) -> None:
        if not delivery.last:
            await msg.nak(
                delay=delay_s if delay_s is not None else self._config.delay_after(delivery.attempt)
            )
            return
        reported = await self._report_failed(job, delivery, status)
        await self._dead_letter(msg, delivery, "deliveries_exhausted", status, ids, reported)
        await msg.term()

    async def _report_failed(self, job: _M, delivery: Delivery, status: status_pb2.Status) -> bool:
        try:
            return await self._spec.fail(job, delivery, status)
        except Exception:
            log.warning("could not report job %s failed", self._spec.name, exc_info=True)
            return False

    async def _dead_letter(
        self,
        msg: Msg,
        delivery: Delivery,
        reason: str,
        status: status_pb2.Status,
        ids: Mapping[str, str],
        operation_failed: bool,
    ) -> None:
        try:
            await self._dead_letters.record(
                subject=msg.subject,
                payload=msg.data,
                headers=dict(msg.headers or {}),
                reason=reason,
                status=status,
                attempts=delivery.attempt,
                stream_sequence=delivery.stream_sequence,
                operation_name=ids.get("operation_name", ""),
                tenant_id=ids.get("tenant_id", ""),
                operation_failed=operation_failed,
                published_at=delivery.published_at,
            )
            metrics.dead_lettered(self._spec.name)
        except Exception:
            # Without the row the message must not be dropped: leave it to JetStream (it is
            # kept in the stream, unacked) and tell the operator loudly.
            log.critical(
                "could not record a dead letter for %s on %s; the message stays in the stream",
                self._spec.name,
                msg.subject,
                exc_info=True,
                extra=dict(ids),
            )
            raise


# Job outcome (``JobObserver.finished``) → metrics state.
_STATES: dict[str, str] = {
    "done": "succeeded",
    "retry": "retried",
    "failed": "failed",
    "dead_letter": "dead_lettered",
    "poison": "poison",
    "requeued": "cancelled",
}
# How often the consumer's backlog is read for the metrics.
_BACKLOG_INTERVAL_S = 10.0


def _job_started(job: str, delivery: Delivery) -> None:
    queued = None
    published = delivery.published_at
    if delivery.attempt == 1 and published is not None:
        if published.tzinfo is None:
            published = published.replace(tzinfo=UTC)
        queued = (datetime.now(UTC) - published).total_seconds()
    metrics.job_started(job, queued_s=queued)


def _job_finished(job: str, outcome: str, seconds: float, error: str) -> None:
    metrics.job_finished(job, _STATES.get(outcome, outcome), seconds, started=outcome != "poison")
    span = trace.get_current_span()
    span.set_attribute("contextiq.job.outcome", outcome)
    if outcome != "done":
        span.set_status(Status(StatusCode.ERROR, f"{outcome}: {error}"[:300]))


def describe_fields(**fields: Any) -> dict[str, str]:
    """Drop empty values: helper for :attr:`JobSpec.describe`."""
    return {k: str(v) for k, v in fields.items() if v}
