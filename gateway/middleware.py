"""The outer ASGI layer of every request: its trace id, ``X-Trace-Id``, and its metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import UNMATCHED_ROUTE, GatewayMetrics
from gateway.tracing import TraceContext, resolve_trace

_SCOPE_KEY: Final = "contextiq.gateway"
_tracer: Final = trace.get_tracer("gateway")


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
        info = RequestInfo(trace=_trace_of(scope))
        scope[_SCOPE_KEY] = info
    assert isinstance(info, RequestInfo)
    return info


class RequestMiddleware:
    """Resolves the trace, adds ``X-Trace-Id`` to the response, and records metrics."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        """Wraps an ASGI app."""
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handles one ASGI connection scope."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        # The request's SERVER span, child of the client's traceparent if any: the trace id
        # the client is told (X-Trace-Id) and the parent the services continue from.
        with _tracer.start_as_current_span(
            method,
            context=propagate.extract(_carrier(scope)),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            info = request_info(scope)
            trace_header = (b"x-trace-id", info.trace.trace_id.encode())
            status = 500

            async def send_with_trace(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), trace_header]
                await send(message)

            try:
                await self._app(scope, receive, send_with_trace)
            finally:
                span.update_name(f"{method} {info.route}")
                span.set_attribute("http.route", info.route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                self._metrics.observe(
                    route=info.route,
                    method=method,
                    status=status,
                    seconds=time.perf_counter() - started,
                )


def _carrier(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in (b"traceparent", b"tracestate")
    }


def _trace_of(scope: Scope) -> TraceContext:
    traceparent: str | None = None
    tracestate: str | None = None
    for name, value in scope["headers"]:
        if name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"tracestate":
            tracestate = value.decode("latin-1")
    return resolve_trace(traceparent, tracestate)
