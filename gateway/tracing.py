"""The trace id of a request: the one the error envelope and ``X-Trace-Id`` report.

From the current OpenTelemetry span when the gateway is instrumented, else from the incoming W3C
``traceparent``, else a fresh random id. The matching ``traceparent`` is forwarded upstream so
that the services' logs and spans carry the same trace id the client was given.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Final

from opentelemetry import trace
from opentelemetry.trace import SpanContext

_TRACEPARENT: Final = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
# A gateway-made traceparent is sampled: for the services it is a root, which the default
# OpenTelemetry sampler (parent-based, always-on root) would sample anyway.
_SAMPLED: Final = "01"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """Trace identity of one request.

    Attributes:
        trace_id: 32 lowercase hex digits.
        traceparent: The W3C traceparent to forward upstream.
        tracestate: The W3C tracestate to forward, if any.
    """

    trace_id: str
    traceparent: str
    tracestate: str | None


def resolve_trace(
    traceparent: str | None, tracestate: str | None, span_context: SpanContext | None = None
) -> TraceContext:
    """Resolves the trace of a request from OpenTelemetry, the headers, or a fresh id.

    Args:
        traceparent: The incoming ``traceparent`` header, if any.
        tracestate: The incoming ``tracestate`` header, if any.
        span_context: The request span's context; the current span's when None.
    """
    if span_context is None:
        span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        trace_id = f"{span_context.trace_id:032x}"
        parent = f"00-{trace_id}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
        state = (span_context.trace_state.to_header() if span_context.trace_state else None) or (
            tracestate
        )
        return TraceContext(trace_id=trace_id, traceparent=parent, tracestate=state)
    if traceparent is not None:
        found = _TRACEPARENT.match(traceparent.strip().lower())
        if (
            found is not None
            and found.group(1) != "ff"
            and found.group(2) != _ZERO_TRACE
            and found.group(3) != _ZERO_SPAN
        ):
            return TraceContext(
                trace_id=found.group(2), traceparent=found.group(0), tracestate=tracestate
            )
    trace_id = new_trace_id()
    return TraceContext(
        trace_id=trace_id,
        traceparent=f"00-{trace_id}-{_new_span_id()}-{_SAMPLED}",
        tracestate=None,
    )


def new_trace_id() -> str:
    """A random, valid (non-zero) 32-hex trace id."""
    while True:
        candidate = secrets.token_hex(16)
        if candidate != _ZERO_TRACE:
            return candidate


def _new_span_id() -> str:
    while True:
        candidate = secrets.token_hex(8)
        if candidate != _ZERO_SPAN:
            return candidate
