"""Trace context across NATS headers: inject, extract, publish and consume spans."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ciq_runtime import telemetry


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = telemetry.install_test_exporter()
    yield exporter
    exporter.shutdown()


def test_inject_then_extract_continues_the_trace(spans: InMemorySpanExporter) -> None:
    with telemetry.tracer().start_as_current_span("request") as request:
        headers = telemetry.inject({"Nats-Msg-Id": "op-1"})
    assert headers["Nats-Msg-Id"] == "op-1"
    assert headers["traceparent"].split("-")[1] == f"{request.get_span_context().trace_id:032x}"

    with telemetry.consume_span("jobs.generate", headers, tenant_id="t1") as consumer:
        pass
    finished = {s.name: s for s in spans.get_finished_spans()}
    process = finished["jobs.generate process"]
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == request.get_span_context().span_id
    assert process.context.trace_id == request.get_span_context().trace_id
    assert process.attributes is not None
    assert process.attributes["contextiq.tenant_id"] == "t1"
    assert consumer.get_span_context().span_id == process.context.span_id


def test_publish_span_joins_the_trace_saved_in_the_headers(spans: InMemorySpanExporter) -> None:
    # An outbox relay publishes later, outside the request: the stored headers carry the trace.
    with telemetry.tracer().start_as_current_span("accept") as accept:
        stored = telemetry.inject({})
    headers = dict(stored)
    with telemetry.publish_span("jobs.generate", headers, operation_id="op-1") as publish:
        pass
    # The message now names the publish span as its parent, not the request span.
    assert headers["traceparent"].split("-")[2] == f"{publish.get_span_context().span_id:016x}"
    with telemetry.consume_span("jobs.generate", headers):
        pass
    by_name = {s.name: s for s in spans.get_finished_spans()}
    trace_id = accept.get_span_context().trace_id
    assert {s.context.trace_id for s in by_name.values()} == {trace_id}
    producer = by_name["jobs.generate publish"]
    assert producer.kind is SpanKind.PRODUCER
    assert producer.parent is not None
    assert producer.parent.span_id == accept.get_span_context().span_id
    consumer = by_name["jobs.generate process"]
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id


def test_message_without_trace_starts_a_new_root(spans: InMemorySpanExporter) -> None:
    with telemetry.consume_span("jobs.generate", None):
        pass
    with telemetry.consume_span("jobs.generate", {"Nats-Msg-Id": "x"}):
        pass
    roots = spans.get_finished_spans()
    assert len(roots) == 2
    assert all(s.parent is None for s in roots)
    assert roots[0].context.trace_id != roots[1].context.trace_id


def test_exception_marks_the_consumer_span_failed(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), telemetry.consume_span("jobs.generate", None):
        raise RuntimeError("boom")
    (span,) = spans.get_finished_spans()
    assert not span.status.is_ok


def test_spans_record_only_once_they_can_be_exported() -> None:
    provider = TracerProvider(sampler=telemetry._Switch())
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("idle") as idle:
        # Not recorded (no exporter), but with real ids for traceparent and the logs.
        assert not idle.is_recording()
        assert idle.get_span_context().is_valid
        assert telemetry.inject({})["traceparent"].split("-")[1] == (
            f"{idle.get_span_context().trace_id:032x}"
        )
    telemetry._start_recording(provider)
    with tracer.start_as_current_span("exported") as exported:
        assert exported.is_recording()
