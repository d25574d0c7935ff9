"""The outer layer of every HTTP request: its span and trace id, ``X-Trace-Id``, its metrics,
and the last-resort INTERNAL envelope.

One plain ASGI layer does all of it (no Starlette middleware stack): per request it reads the
trace headers once, opens the request's SERVER span without a context manager, and caches the
Prometheus children by label set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import internal_error
from gateway.metrics import UNMATCHED_ROUTE, GatewayMetrics
from gateway.tracing import TraceContext, resolve_trace

_log = logging.getLogger("gateway.app")

_SCOPE_KEY: Final = "contextiq.gateway"
_tracer: Final = trace.get_tracer("gateway")
_RESPONSE_START: Final = "http.response.start"


@dataclass(slots=True)
class RequestInfo:
    """Per-request facts shared by the layers of the app through the ASGI scope.

    Attributes:
        trace: The request's trace.
        route: The metrics label: the matched route template, or a fixed name.
    """

    trace: TraceContext
    route: str = UNMATCHED_ROUTE


def request_info(scope: Scope) -> RequestInfo:
    """The request's info, created on the spot when the middleware did not run."""
    info = scope.get(_SCOPE_KEY)
    if info is None:
        traceparent, tracestate = _trace_headers(scope)
        info = RequestInfo(trace=resolve_trace(traceparent, tracestate))
        scope[_SCOPE_KEY] = info
    assert isinstance(info, RequestInfo)
    return info


class RequestMiddleware:
    """Opens the request's span, adds ``X-Trace-Id`` to the response, records metrics, and
    answers an exception that escaped the app with the INTERNAL envelope (logged, never a
    traceback)."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        """Wraps an ASGI app."""
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handles one ASGI scope: an HTTP request, or anything else passed through."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        traceparent, tracestate = _trace_headers(scope)
        # The request's SERVER span, child of the client's traceparent if any: the trace id
        # the client is told (X-Trace-Id) and the parent the services continue from.
        parent = (
            propagate.extract(
                {"traceparent": traceparent, "tracestate": tracestate}
                if tracestate is not None
                else {"traceparent": traceparent}
            )
            if traceparent is not None
            else None
        )
        span = _tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        info = RequestInfo(trace=resolve_trace(traceparent, tracestate, span.get_span_context()))
        scope[_SCOPE_KEY] = info
        trace_header = (b"x-trace-id", info.trace.trace_id.encode())
        status = 500
        started_response = False

        async def send_with_trace(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == _RESPONSE_START:
                status = message["status"]
                started_response = True
                message["headers"] = [*message.get("headers", ()), trace_header]
            await send(message)

        try:
            await self._app(scope, receive, send_with_trace)
        except Exception as exc:  # noqa: BLE001 - the contract: never a traceback, the envelope
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            _log.error("unexpected error (trace_id=%s)", info.trace.trace_id, exc_info=exc)
            if not started_response:
                await internal_error().to_response(info.trace.trace_id)(
                    scope, receive, send_with_trace
                )
        finally:
            otel_context.detach(token)
            if span.is_recording():
                span.update_name(f"{method} {info.route}")
                span.set_attribute("http.route", info.route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
            self._metrics.observe(
                route=info.route,
                method=method,
                status=status,
                seconds=time.perf_counter() - started,
            )


def _trace_headers(scope: Scope) -> tuple[str | None, str | None]:
    traceparent: str | None = None
    tracestate: str | None = None
    for name, value in scope["headers"]:
        if name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"tracestate":
            tracestate = value.decode("latin-1")
    return traceparent, tracestate
