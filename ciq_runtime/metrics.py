"""Prometheus metrics of a ContextIQ process: RPCs, jobs, queues, LLM calls, tenant sizes.

Every process exposes one registry (:data:`REGISTRY`) on ``/metrics``: a standalone service or
worker serves it on ``CONTEXTIQ_METRICS_PORT`` (:func:`start_metrics_server`); the one-process
stack (``make run``) adds it to the gateway's own ``/metrics``. Like the logging configuration
and the OpenTelemetry tracer provider, the registry is process-wide by nature: one scrape
target per process. It holds counters only, never a client or connection; code reports through
the small functions below (``rpc_finished``, ``job_started``, ``job_finished``,
``dead_lettered``, ``llm_call``, ``set_consumer_backlog``, ``set_tenant_counts``).

Label values are bounded: gRPC methods come from the protos (unknown methods never reach the
interceptor), free-form labels (job types, models, error types) keep their first
:data:`MAX_LABEL_VALUES` distinct values and report the rest as ``"other"``, and per-tenant
counts keep the top :data:`TOP_TENANTS` tenants plus ``"other"``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ciq_runtime.settings import Settings

__all__ = [
    "JOB_STATES",
    "MAX_LABEL_VALUES",
    "OTHER",
    "REGISTRY",
    "TOP_TENANTS",
    "MetricsServer",
    "ProcessMetrics",
    "TenantCountQuery",
    "TenantCountRefresher",
    "dead_lettered",
    "job_finished",
    "job_started",
    "llm_call",
    "observe_consumer",
    "render",
    "rpc_finished",
    "set_consumer_backlog",
    "set_tenant_counts",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

#: Label value standing for everything past a bound (tenants past the top N, rare values).
OTHER: Final = "other"
#: Distinct values a free-form label keeps before the rest count as ``"other"``.
MAX_LABEL_VALUES: Final = 64
#: Tenants reported by name in the per-tenant counts; the others are summed as ``"other"``.
TOP_TENANTS: Final = 20
#: Outcomes of a job (``job_finished(state=...)``); anything else is reported as ``"other"``.
JOB_STATES: Final = frozenset(
    {"succeeded", "failed", "retried", "dead_lettered", "poison", "skipped", "cancelled"}
)

# RPCs: sub-millisecond reads to the 30 s default deadline and long model calls.
_RPC_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Jobs and model calls: seconds to minutes.
_LONG_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _Bounded:
    """Keeps the first ``limit`` distinct values of a label; later ones become ``"other"``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        value = value or "unknown"
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


class _TenantCounts(Collector):
    """Per-tenant gauges replaced whole at each refresh (tenants that drop out disappear)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, float]] = {}

    def set(self, resource: str, counts: Mapping[str, float]) -> None:
        with self._lock:
            self._values[resource] = dict(counts)

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "contextiq_tenant_resources",
            f"Live resources per tenant (top {TOP_TENANTS} tenants by count, the rest as "
            "'other'), refreshed periodically.",
            labels=["resource", "tenant"],
        )
        with self._lock:
            snapshot = {k: dict(v) for k, v in self._values.items()}
        for resource, counts in sorted(snapshot.items()):
            for tenant, value in sorted(counts.items()):
                family.add_metric([resource, tenant], value)
        return [family]

    def describe(self) -> list[Metric]:
        # Describing without collecting keeps registration from running a refresh.
        return [GaugeMetricFamily("contextiq_tenant_resources", "", labels=["resource", "tenant"])]


#: The process's registry: what ``/metrics`` serves.
REGISTRY: Final = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    # The default collectors also sit in prometheus_client's global registry; they are
    # stateless readers of /proc and gc, so registering them here too is harmless.
    REGISTRY.register(_collector)

_RPC_REQUESTS: Final = Counter(
    "contextiq_grpc_server_requests",
    "gRPC calls served, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    registry=REGISTRY,
)
_RPC_DURATION: Final = Histogram(
    "contextiq_grpc_server_request_duration_seconds",
    "Time from the start of a gRPC call to its status (the whole stream for streaming calls).",
    ["grpc_service", "grpc_method"],
    buckets=_RPC_BUCKETS,
    registry=REGISTRY,
)
#: (full method, code) -> the request counter and duration histogram of that series.
_RPC_SERIES: Final[dict[tuple[str, str], tuple[Counter, Histogram]]] = {}
_JOBS: Final = Counter(
    "contextiq_jobs",
    "Job deliveries handled by the workers, by job type and state (succeeded, retried, "
    "failed, dead_lettered, poison, cancelled).",
    ["job", "state"],
    registry=REGISTRY,
)
_JOBS_RUNNING: Final = Gauge(
    "contextiq_jobs_in_progress",
    "Jobs being handled right now.",
    ["job"],
    registry=REGISTRY,
)
_JOB_DURATION: Final = Histogram(
    "contextiq_job_duration_seconds",
    "Time a worker spent on one delivery of a job.",
    ["job", "state"],
    buckets=_LONG_BUCKETS,
    registry=REGISTRY,
)
_JOB_QUEUE_WAIT: Final = Histogram(
    "contextiq_job_queue_wait_seconds",
    "Queue lag: time from the publish of a job to the start of its first delivery.",
    ["job"],
    buckets=_LONG_BUCKETS,
    registry=REGISTRY,
)
_DEAD_LETTERS: Final = Counter(
    "contextiq_dead_letters",
    "Jobs given up on (poison or out of deliveries) and recorded as dead letters.",
    ["job"],
    registry=REGISTRY,
)
_PENDING: Final = Gauge(
    "contextiq_queue_pending_messages",
    "Messages in the stream not yet delivered to the consumer (JetStream num_pending): the "
    "queue's backlog.",
    ["stream", "consumer"],
    registry=REGISTRY,
)
_ACK_PENDING: Final = Gauge(
    "contextiq_queue_ack_pending_messages",
    "Messages delivered and not yet acknowledged (JetStream num_ack_pending).",
    ["stream", "consumer"],
    registry=REGISTRY,
)
_REDELIVERED: Final = Gauge(
    "contextiq_queue_redelivered_messages",
    "Messages delivered more than once and not yet acknowledged (JetStream num_redelivered).",
    ["stream", "consumer"],
    registry=REGISTRY,
)
_LLM_CALLS: Final = Counter(
    "contextiq_llm_requests",
    "Calls to a model provider, by model, operation and outcome ('ok' or the error type).",
    ["model", "operation", "outcome"],
    registry=REGISTRY,
)
_LLM_TOKENS: Final = Counter(
    "contextiq_llm_tokens",
    "Tokens used by model calls, by model, operation and kind ('prompt' or 'completion').",
    ["model", "operation", "kind"],
    registry=REGISTRY,
)
_LLM_ERRORS: Final = Counter(
    "contextiq_llm_errors",
    "Failed calls to a model provider, by model, operation and error type.",
    ["model", "operation", "error"],
    registry=REGISTRY,
)
_LLM_DURATION: Final = Histogram(
    "contextiq_llm_request_duration_seconds",
    "Time of one call to a model provider.",
    ["model", "operation"],
    buckets=_LONG_BUCKETS,
    registry=REGISTRY,
)
_TENANTS: Final = _TenantCounts()
REGISTRY.register(_TENANTS)

_subjects = _Bounded()
_models = _Bounded()
_operations = _Bounded()
_errors = _Bounded()


def rpc_finished(full_method: str, code: str, seconds: float) -> None:
    """Count one finished gRPC call (the server interceptor calls this).

    Args:
        full_method: ``/package.Service/Method``.
        code: The status code name (``OK``, ``NOT_FOUND``, ...).
        seconds: Duration of the call.
    """
    series = _RPC_SERIES.get((full_method, code))
    if series is None:
        service, _, method = full_method.lstrip("/").partition("/")
        series = _RPC_REQUESTS.labels(service, method, code), _RPC_DURATION.labels(service, method)
        # Bounded by methods served x status codes; labels() costs a lock and validation.
        _RPC_SERIES[(full_method, code)] = series
    series[0].inc()
    series[1].observe(seconds)


def job_started(job: str, *, queued_s: float | None = None) -> None:
    """A worker began handling a delivery of a job; pair it with :func:`job_finished`.

    Args:
        job: The job type (the durable consumer's name; a fixed value, it is a label).
        queued_s: On the first delivery, the time since the job was published (queue lag).
    """
    label = _subjects(job)
    _JOBS_RUNNING.labels(label).inc()
    if queued_s is not None:
        _JOB_QUEUE_WAIT.labels(label).observe(max(0.0, queued_s))


def job_finished(job: str, state: str, seconds: float, *, started: bool = True) -> None:
    """A worker is done with one delivery of a job.

    Args:
        job: The job type, as given to :func:`job_started`.
        state: One of :data:`JOB_STATES`: ``succeeded``, ``retried`` (nak'ed for redelivery),
            ``failed`` (reported failed, no retry), ``dead_lettered`` (out of deliveries),
            ``poison`` (undecodable or invalid), ``skipped`` (already done), ``cancelled``
            (handed back on shutdown).
        seconds: Time spent on this delivery.
        started: False when :func:`job_started` was not called for it (poison messages).
    """
    label = _subjects(job)
    state = state if state in JOB_STATES else OTHER
    if started:
        _JOBS_RUNNING.labels(label).dec()
    _JOBS.labels(label, state).inc()
    _JOB_DURATION.labels(label, state).observe(seconds)


def dead_lettered(job: str) -> None:
    """A job was given up on and recorded as a dead letter."""
    _DEAD_LETTERS.labels(_subjects(job)).inc()


def llm_call(
    *,
    model: str,
    operation: str,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    error: str | None = None,
    seconds: float | None = None,
) -> None:
    """Count one call to a model provider.

    Args:
        model: The model name as configured (``openai/gpt-4o-mini``).
        operation: What the call was for (the output schema's name: ``extract_memories``...).
        prompt_tokens: Input tokens the provider reported.
        completion_tokens: Output tokens the provider reported.
        error: The error type (``RateLimitError``...) when the call failed; None on success.
        seconds: Duration of the call, if measured.
    """
    model_label = _models(model)
    operation_label = _operations(operation)
    outcome = "ok" if error is None else _errors(error)
    _LLM_CALLS.labels(model_label, operation_label, outcome).inc()
    if prompt_tokens:
        _LLM_TOKENS.labels(model_label, operation_label, "prompt").inc(prompt_tokens)
    if completion_tokens:
        _LLM_TOKENS.labels(model_label, operation_label, "completion").inc(completion_tokens)
    if error is not None:
        _LLM_ERRORS.labels(model_label, operation_label, outcome).inc()
    if seconds is not None:
        _LLM_DURATION.labels(model_label, operation_label).observe(seconds)


def set_consumer_backlog(
    *, stream: str, consumer: str, pending: int, ack_pending: int, redelivered: int = 0
) -> None:
    """Record a JetStream consumer's backlog (from ``js.consumer_info``).

    Args:
        stream: Stream name.
        consumer: Durable consumer name.
        pending: ``num_pending``: not yet delivered.
        ack_pending: ``num_ack_pending``: delivered, not yet acknowledged.
        redelivered: ``num_redelivered``.
    """
    _PENDING.labels(stream, consumer).set(pending)
    _ACK_PENDING.labels(stream, consumer).set(ack_pending)
    _REDELIVERED.labels(stream, consumer).set(redelivered)


async def observe_consumer(js: object, *, stream: str, consumer: str) -> None:
    """Read one consumer's info from JetStream and record its backlog.

    Args:
        js: The JetStream context (``nats.js.JetStreamContext``).
        stream: Stream name.
        consumer: Durable consumer name.
    """
    info = await js.consumer_info(stream, consumer)  # type: ignore[attr-defined]
    set_consumer_backlog(
        stream=stream,
        consumer=consumer,
        pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
        redelivered=int(info.num_redelivered or 0),
    )


def set_tenant_counts(resource: str, top: Sequence[tuple[str, int]], total: int) -> None:
    """Replace the per-tenant counts of a resource.

    Args:
        resource: ``sessions`` or ``memories``.
        top: The largest tenants and their counts, at most :data:`TOP_TENANTS` are kept.
        total: The count over all tenants; what the top tenants do not cover is ``"other"``.
    """
    kept = dict(sorted(top, key=lambda item: (-item[1], item[0]))[:TOP_TENANTS])
    other = total - sum(kept.values())
    if other > 0 or OTHER in kept:
        kept[OTHER] = kept.get(OTHER, 0) + max(other, 0)
    _TENANTS.set(resource, kept)


def render() -> bytes:
    """The process registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


# --- HTTP endpoint ----------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (any path answers; Prometheus scrapes ``/metrics``)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server.server_port)

    def stop(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serve :data:`REGISTRY` over HTTP from a background thread.

    Args:
        host: Interface to listen on.
        port: TCP port (``CONTEXTIQ_METRICS_PORT``); 0 picks a free one.

    Returns:
        The running server.
    """
    server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    return MetricsServer(server=server, thread=thread)


# --- per-tenant counts ------------------------------------------------------------------------


@dataclass(frozen=True)
class TenantCountQuery:
    """How to count one resource per tenant.

    Attributes:
        resource: The ``resource`` label (``sessions``, ``memories``).
        sql: A query returning ``(tenant_id, n, total)`` rows, largest ``n`` first, limited
            to ``:top`` rows; ``total`` is the count over every tenant.
    """

    resource: str
    sql: str

    @classmethod
    def of_table(cls, resource: str, table: str, live: str) -> TenantCountQuery:
        """Count the rows of ``table`` (schema-qualified) matching the SQL condition ``live``.

        The service owning the table declares it (``Component.tenant_counts``).
        """
        # One pass over the tenant index; runs every refresh interval, never per request.
        return cls(
            resource,
            f"WITH counts AS (SELECT tenant_id, count(*) AS n FROM {table} WHERE {live} "  # noqa: S608
            "GROUP BY tenant_id) SELECT tenant_id, n, sum(n) OVER () AS total FROM counts "
            "ORDER BY n DESC, tenant_id LIMIT :top",
        )


class TenantCountRefresher:
    """Re-runs the per-tenant count queries every ``interval_s`` seconds in the background."""

    def __init__(
        self,
        engine: AsyncEngine,
        queries: Sequence[TenantCountQuery],
        *,
        interval_s: float = 60.0,
        top: int = TOP_TENANTS,
    ) -> None:
        """Describe the refresher; nothing runs until :meth:`start`.

        Args:
            engine: An engine on the services' database (a one-connection pool is enough).
            queries: What to count.
            interval_s: Pause between two refreshes.
            top: Tenants named per resource.
        """
        self._engine = engine
        self._queries = tuple(queries)
        self._interval_s = interval_s
        self._top = top
        self._task: asyncio.Task[None] | None = None

    async def refresh_once(self) -> None:
        """Run every query once and publish the counts.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: If a query fails (e.g. its schema is not migrated).
        """
        from sqlalchemy import text

        async with self._engine.connect() as conn:
            for query in self._queries:
                rows = (await conn.execute(text(query.sql), {"top": self._top})).all()
                total = int(rows[0][2]) if rows else 0
                set_tenant_counts(query.resource, [(str(r[0]), int(r[1])) for r in rows], total)

    def start(self) -> None:
        """Start refreshing in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="ciq-tenant-counts")

    async def stop(self) -> None:
        """Stop refreshing; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except Exception as exc:  # noqa: BLE001 - a failed refresh keeps the last counts
                log.warning("refreshing the per-tenant counts failed: %s", type(exc).__name__)
            await asyncio.sleep(self._interval_s)


class ProcessMetrics:
    """The metrics side of one process: the ``/metrics`` endpoint and the per-tenant counts."""

    def __init__(
        self,
        *,
        server: MetricsServer | None,
        refresher: TenantCountRefresher | None,
        engine: AsyncEngine | None,
    ) -> None:
        """Hold what :meth:`start` started (use :meth:`start`)."""
        self.server = server
        self._refresher = refresher
        self._engine = engine

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        tenant_counts: Sequence[TenantCountQuery],
        port: int | None,
        refresh_interval_s: float = 60.0,
    ) -> ProcessMetrics:
        """Serve ``/metrics`` on ``port`` and start refreshing ``tenant_counts``.

        Args:
            settings: Process settings (``database_url``, ``grpc_host`` as the interface).
            tenant_counts: The per-tenant counts of the process's components
                (``Component.tenant_counts``); they need ``database_url``.
            port: Port of the HTTP endpoint (0: a free one); None: no endpoint of its own (the
                one-process stack serves the registry on the gateway's ``/metrics``).
            refresh_interval_s: Pause between two refreshes of the per-tenant counts.

        Returns:
            The running parts; :meth:`stop` them on shutdown.
        """
        queries = list(tenant_counts)
        engine = refresher = None
        if queries and settings.database_url:
            from ciq_runtime.db import create_engine

            engine = create_engine(
                settings,
                pool_size=1,
                max_overflow=0,
                application_name=f"contextiq-{settings.service_name}-metrics",
            )
            refresher = TenantCountRefresher(engine, queries, interval_s=refresh_interval_s)
            refresher.start()
        server = None
        if port is not None:
            server = start_metrics_server(settings.grpc_host, port)
            log.info(
                "serving metrics on http://%s:%d/metrics",
                settings.grpc_host,
                server.port,
                extra={"metrics_port": server.port},
            )
        return cls(server=server, refresher=refresher, engine=engine)

    async def refresh(self) -> None:
        """Refresh the per-tenant counts now (tests, and before a final scrape)."""
        if self._refresher is not None:
            await self._refresher.refresh_once()

    async def stop(self) -> None:
        """Stop the endpoint and the refresher; safe to call twice."""
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None
        if self._refresher is not None:
            await self._refresher.stop()
            self._refresher = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
