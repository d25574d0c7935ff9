"""OpenTelemetry tracing: one tracer provider per process, gRPC and NATS propagation.

Every process calls :func:`setup_tracing` once in ``main()``. Spans are exported over OTLP/gRPC
only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; otherwise they are created non-recording (a
few microseconds each) with real ids, so log lines carry trace and span ids and the trace
context still travels to other processes, but nothing is kept or leaves the process. Tests call
:func:`install_test_exporter` to collect finished spans in memory.

Propagation:

* gRPC: :class:`ciq_runtime.interceptors.RpcInterceptor` (the interceptor of every
  server, see :func:`ciq_runtime.server.default_interceptors`) continues the caller's trace;
  :func:`client_interceptors` / :func:`open_channel` start a CLIENT span and send the W3C
  ``traceparent`` on every call between services.
* NATS / JetStream: :func:`ciq_runtime.nats.publish_proto` wraps each publish in a PRODUCER
  span (:func:`publish_span`) and writes its context into the message headers (:func:`inject`);
  a worker continues that trace with :func:`consume_span`, whose CONSUMER span is a child of
  the message's context (:func:`extract`). A publisher that sends later than the request that
  caused the message (an outbox relay) stores ``inject({})`` at request time and hands those
  headers to ``publish_proto``: the publish span then joins the original request's trace.

The tracer provider is process-wide by nature (the OpenTelemetry API holds it, as ``logging``
holds the root handlers); no client or connection is kept here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ciq_runtime.logging import bind_log_context

__all__ = [
    "ATTR_PREFIX",
    "TRACER_NAME",
    "attach",
    "client_interceptors",
    "consume_span",
    "detach",
    "extract",
    "inject",
    "install_test_exporter",
    "mark_error",
    "open_channel",
    "publish_span",
    "set_span_ids",
    "setup_tracing",
    "shutdown_tracing",
    "tracer",
]

log = logging.getLogger(__name__)

#: Instrumentation scope of the spans ContextIQ creates itself (DB, LLM, NATS, gateway).
TRACER_NAME: Final = "contextiq"
#: Prefix of ContextIQ's own span attributes (``contextiq.tenant_id``, ``contextiq.session_id``).
ATTR_PREFIX: Final = "contextiq."

# Probes call these every few seconds; a span per probe would drown the real traffic.
_UNTRACED_SERVICES: Final = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")

_lock = threading.Lock()


def setup_tracing(*, service_name: str, otlp_endpoint: str | None = None) -> TracerProvider:
    """Install the process's tracer provider; later calls return the installed one.

    Args:
        service_name: ``service.name`` of every span of this process ("sessions", "memory",
            "extraction", "gateway", "contextiq" for the one-process stack).
        otlp_endpoint: ``OTEL_EXPORTER_OTLP_ENDPOINT``; spans are exported there in batches.
            ``None``: nothing is exported. The exporter reads the other standard
            ``OTEL_EXPORTER_OTLP_*`` variables (headers, certificates, timeout) itself.

    Returns:
        The provider (also the global one of the OpenTelemetry API).
    """
    with _lock:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            if otlp_endpoint and not getattr(current, "_ciq_otlp", False):
                _add_otlp(current, otlp_endpoint)
            return current
        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), sampler=_Switch()
        )
        if otlp_endpoint:
            _add_otlp(provider, otlp_endpoint)
        trace.set_tracer_provider(provider)
        return provider


class _Switch(Sampler):
    """Records nothing until spans have somewhere to go, then samples as configured.

    Without an exporter, recording spans would only cost time (about 10 µs each): they are
    then created non-recording, which still gives them valid ids that travel in
    ``traceparent`` and appear in the logs. Once an exporter is added (OTLP, or a test's
    in-memory one), the standard ``OTEL_TRACES_SAMPLER`` choice applies (default: parent-based,
    always on). Set the OTLP endpoint on every process: a process that does not export marks
    its spans not sampled, and the processes it calls then follow that.
    """

    def __init__(self) -> None:
        self.recording: Sampler | None = None

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        delegate = self.recording or ALWAYS_OFF
        return delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"ContextIQ({(self.recording or ALWAYS_OFF).get_description()})"


def _start_recording(provider: TracerProvider) -> None:
    sampler = provider.sampler
    if isinstance(sampler, _Switch) and sampler.recording is None:
        sampler.recording = sampling._get_from_env_or_default()


def _add_otlp(provider: TracerProvider, endpoint: str) -> None:
    # Imported only when used: the exporter pulls in its own protobuf/gRPC stack.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    provider._ciq_otlp = True  # type: ignore[attr-defined]  # marks "export already wired"
    _start_recording(provider)
    log.info("exporting traces over OTLP", extra={"otlp_endpoint": endpoint})


def shutdown_tracing() -> None:
    """Flush and stop the span processors (exporters) of the process; call once at exit."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


class _Forwarder(SpanProcessor):
    """Sends finished spans to the exporters tests install (added to the provider only once)."""

    def __init__(self) -> None:
        self.exporters: list[InMemorySpanExporter] = []

    def on_end(self, span: Any) -> None:
        for exporter in list(self.exporters):
            exporter.export((span,))


class _TestExporter(InMemorySpanExporter):
    """An in-memory exporter that stops receiving spans once shut down."""

    def __init__(self, forwarder: _Forwarder) -> None:
        super().__init__()
        self._forwarder = forwarder

    def shutdown(self) -> None:
        with _lock:
            if self in self._forwarder.exporters:
                self._forwarder.exporters.remove(self)
        super().shutdown()


def install_test_exporter(*, service_name: str = "contextiq-tests") -> InMemorySpanExporter:
    """Collect every span finished from now on in memory (tests only).

    Installs a tracer provider first when the process has none. Each call returns a new
    exporter; ``exporter.clear()`` empties it, ``exporter.shutdown()`` stops its collection.

    Args:
        service_name: ``service.name`` of the provider, if this call creates it.

    Returns:
        The exporter; ``get_finished_spans()`` lists the spans.
    """
    provider = setup_tracing(service_name=service_name)
    with _lock:
        forwarder = getattr(provider, "_ciq_test_forwarder", None)
        if not isinstance(forwarder, _Forwarder):
            forwarder = _Forwarder()
            provider.add_span_processor(forwarder)
            provider._ciq_test_forwarder = forwarder  # type: ignore[attr-defined]
        exporter = _TestExporter(forwarder)
        forwarder.exporters.append(exporter)
        _start_recording(provider)
    return exporter


def tracer() -> Tracer:
    """ContextIQ's tracer (a no-op one until :func:`setup_tracing` ran)."""
    return trace.get_tracer(TRACER_NAME)


def set_span_ids(span: Span | None = None, **ids: object) -> None:
    """Set ``contextiq.<name>`` attributes (tenant, session, memory ids) on a span.

    Args:
        span: The span; the current one when omitted.
        **ids: Names and values; ``None`` values are skipped, others are turned into strings.
    """
    target = span if span is not None else trace.get_current_span()
    for key, value in ids.items():
        if value is not None and value != "":
            target.set_attribute(ATTR_PREFIX + key, str(value))


# --- gRPC -------------------------------------------------------------------------------------


def _untraced_filter() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(
        filters.any_of(*(filters.service_name(name) for name in _UNTRACED_SERVICES))
    )


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry client interceptors for a ``grpc.aio`` channel between services.

    Each call gets a CLIENT span and carries ``traceparent`` to the server.
    """
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        filter_=_untraced_filter()
    )
    return interceptors


def open_channel(
    target: str,
    *,
    options: Sequence[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """Open a traced ``grpc.aio`` channel to another ContextIQ service.

    Args:
        target: ``host:port``.
        options: gRPC channel arguments.
        credentials: TLS credentials; plaintext when None.

    Returns:
        The channel; close it with ``await channel.close()``.
    """
    if credentials is None:
        return grpc.aio.insecure_channel(
            target, options=list(options), interceptors=client_interceptors()
        )
    return grpc.aio.secure_channel(
        target, credentials, options=list(options), interceptors=client_interceptors()
    )


# --- NATS / JetStream -------------------------------------------------------------------------


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Write the trace context (W3C ``traceparent``/``tracestate``) into message headers.

    Args:
        headers: The headers to add to (modified in place).
        context: The context to write; the current one when omitted.

    Returns:
        ``headers``, for chaining (``publish(..., headers=inject({}))``).
    """
    propagate.inject(headers, context=context)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """Read the trace context a publisher wrote with :func:`inject`.

    Args:
        headers: A message's headers (``msg.headers``, may be None).

    Returns:
        A context whose current span is the remote parent; an empty context (a new trace
        would start under it) when the headers carry none.
    """
    return propagate.extract(dict(headers or {}))


def _has_trace(headers: Mapping[str, str] | None) -> bool:
    return bool(headers) and "traceparent" in {k.lower() for k in headers or {}}


@contextmanager
def publish_span(
    subject: str, headers: dict[str, str], *, parent: Context | None = None, **ids: object
) -> Iterator[Span]:
    """Wrap a NATS publish in a PRODUCER span and put that span's context into ``headers``.

    Args:
        subject: The subject published to.
        headers: The message headers; ``traceparent`` is (over)written with the span's context.
        parent: Parent context; by default the one in ``headers`` if they carry a
            ``traceparent`` (an outbox row stored at request time), else the current one.
        **ids: ``contextiq.<name>`` attributes (tenant_id, operation_id, ...).

    Yields:
        The span.
    """
    if parent is None and _has_trace(headers):
        parent = extract(headers)
    with tracer().start_as_current_span(
        f"{subject} publish",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "publish",
            "messaging.destination.name": subject,
        },
    ) as span:
        set_span_ids(span, **ids)
        # Without a tracer provider the span is invalid: the headers then pass unchanged.
        if span.get_span_context().is_valid:
            for key in [k for k in headers if k.lower() in ("traceparent", "tracestate")]:
                del headers[key]
            inject(headers)
        yield span


@contextmanager
def consume_span(
    subject: str,
    headers: Mapping[str, str] | None,
    *,
    name: str | None = None,
    **ids: object,
) -> Iterator[Span]:
    """Run the handling of one message inside a CONSUMER span continuing the publisher's trace.

    The span is current inside the block, so gRPC calls made there (with traced channels),
    database and LLM spans become its children, and log lines carry its trace id plus ``ids``.
    An exception leaving the block marks the span as an error and propagates.

    Example::

        with telemetry.consume_span(msg.subject, msg.headers, tenant_id=job.tenant_id):
            await handle(job)

    Args:
        subject: The message's subject.
        headers: The message's headers (``msg.headers``).
        name: Span name; ``"<subject> process"`` by default.
        **ids: Bound to the log context and set as ``contextiq.<name>`` span attributes.

    Yields:
        The span.
    """
    parent = extract(headers)
    with (
        tracer().start_as_current_span(
            name or f"{subject} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": subject,
            },
        ) as span,
        bind_log_context(**{k: v for k, v in ids.items() if v is not None and v != ""}),
    ):
        set_span_ids(span, **ids)
        yield span


def mark_error(span: Span, exc: BaseException) -> None:
    """Record an exception on a span and mark it failed (for errors handled, not raised)."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def attach(context: Context) -> Any:
    """Make ``context`` current until :func:`detach` (for code that cannot use ``with``)."""
    return otel_context.attach(context)


def detach(token: Any) -> None:
    """Undo :func:`attach`."""
    otel_context.detach(token)
