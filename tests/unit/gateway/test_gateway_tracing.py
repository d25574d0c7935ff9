"""Where the trace id comes from: OpenTelemetry, then traceparent, then a fresh one."""

from __future__ import annotations

import re

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from gateway.tracing import resolve_trace

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_current_span_wins() -> None:
    context = SpanContext(
        trace_id=0xABC, span_id=0xDEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    with trace.use_span(NonRecordingSpan(context)):
        found = resolve_trace(TRACEPARENT, "v=1")

    assert found.trace_id == f"{0xABC:032x}"
    assert found.traceparent == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    assert found.tracestate == "v=1"


def test_incoming_traceparent() -> None:
    found = resolve_trace(TRACEPARENT.upper(), "v=1")

    assert found.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert found.traceparent == TRACEPARENT
    assert found.tracestate == "v=1"


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_fresh_trace_otherwise(traceparent: str | None) -> None:
    first = resolve_trace(traceparent, "ignored")
    second = resolve_trace(traceparent, None)

    assert re.fullmatch(r"[0-9a-f]{32}", first.trace_id)
    assert first.trace_id != second.trace_id
    assert re.fullmatch(rf"00-{first.trace_id}-[0-9a-f]{{16}}-01", first.traceparent)
    assert first.tracestate is None
