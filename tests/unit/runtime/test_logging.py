"""Structured logging: JSON line shape, bound context, trace ids, redaction, idempotence."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from ciq_runtime.logging import bind_log_context, configure_logging, current_log_context

_RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging(service="sessions", level="DEBUG", stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        if handler not in saved_handlers:
            root.removeHandler(handler)
    root.setLevel(saved_level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_line_shape(stream: io.StringIO) -> None:
    logging.getLogger("sessions.store").info("created %s", "s1", extra={"session_id": "s1"})
    [line] = lines(stream)
    assert _RFC3339_MS_UTC.fullmatch(str(line["timestamp"]))
    assert line["level"] == "INFO"
    assert line["service"] == "sessions"
    assert line["logger"] == "sessions.store"
    assert line["message"] == "created s1"
    assert line["session_id"] == "s1"
    # Standard LogRecord attributes are not dumped as fields.
    for attr in ("args", "msg", "levelno", "pathname", "lineno", "created", "thread"):
        assert attr not in line
    assert "trace_id" not in line


def test_each_record_is_exactly_one_line(stream: io.StringIO) -> None:
    log = logging.getLogger("t")
    try:
        raise RuntimeError("first\nsecond")
    except RuntimeError:
        log.exception("multi\nline")
    text = stream.getvalue()
    assert text.count("\n") == 1
    [line] = lines(stream)
    assert line["message"] == "multi\nline"
    assert "RuntimeError: first" in str(line["exception"])
    assert "Traceback" in str(line["exception"])


def test_bound_context_is_added_and_removed(stream: io.StringIO) -> None:
    log = logging.getLogger("t")
    with bind_log_context(tenant_id="t1", request_id="r1"):
        with bind_log_context(request_id="r2"):
            assert current_log_context() == {"tenant_id": "t1", "request_id": "r2"}
            log.info("inner")
        log.info("outer", extra={"tenant_id": "explicit"})
    log.info("after")
    inner, outer, after = lines(stream)
    assert (inner["tenant_id"], inner["request_id"]) == ("t1", "r2")
    # An explicit extra wins over the bound value.
    assert (outer["tenant_id"], outer["request_id"]) == ("explicit", "r1")
    assert "tenant_id" not in after
    assert "request_id" not in after


async def test_bound_context_is_per_task(stream: io.StringIO) -> None:
    import asyncio

    log = logging.getLogger("t")

    async def work(tenant: str) -> None:
        with bind_log_context(tenant_id=tenant):
            await asyncio.sleep(0)
            log.info("work")

    await asyncio.gather(work("a"), work("b"))
    assert sorted(str(line["tenant_id"]) for line in lines(stream)) == ["a", "b"]


def test_trace_and_span_ids_inside_a_span(stream: io.StringIO) -> None:
    context = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    with trace.use_span(trace.NonRecordingSpan(context)):
        logging.getLogger("t").info("traced")
    [line] = lines(stream)
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == "b7ad6b7169203331"


def test_secrets_are_redacted_in_message_extras_context_and_exception(
    stream: io.StringIO,
) -> None:
    api_key = "ck_live_AbCdEf123456"
    log = logging.getLogger("t")
    with bind_log_context(authorization="Bearer eyJhbGciOi.payload.sig"):
        log.info(
            "login with %s via Authorization: Bearer eyJtoken.abc.def password=hunter2",
            api_key,
            extra={
                "api_key": "plain-value",
                "headers": {"X-Api-Key": "k1", "accept": "json"},
                "note": f"key was {api_key}",
                "max_tokens": 256,
            },
        )
    try:
        raise ValueError(f"bad key {api_key}")
    except ValueError:
        log.exception("failed")
    raw = stream.getvalue()
    for secret in (api_key, "eyJ", "hunter2", "plain-value", "k1"):
        assert secret not in raw
    first, second = lines(stream)
    assert "[REDACTED]" in str(first["message"])
    assert first["api_key"] == "[REDACTED]"
    assert first["authorization"] == "[REDACTED]"
    assert first["headers"] == {"X-Api-Key": "[REDACTED]", "accept": "json"}
    assert first["note"] == "key was [REDACTED]"
    assert first["max_tokens"] == 256  # token counts are not secrets
    assert "[REDACTED]" in str(second["exception"])


def test_short_ck_prefix_is_not_mistaken_for_a_key(stream: io.StringIO) -> None:
    logging.getLogger("t").info("ck_short and ck_ are fine")
    [line] = lines(stream)
    assert line["message"] == "ck_short and ck_ are fine"


def test_configure_logging_twice_keeps_one_handler() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging(service="a", stream=first)
        configure_logging(service="b", stream=second)
        logging.getLogger("t").warning("once")
        assert first.getvalue() == ""
        assert [line["service"] for line in lines(second)] == ["b"]
        assert len(root.handlers) == len(saved_handlers) + 1
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)


def test_level_filters_records(stream: io.StringIO) -> None:
    configure_logging(service="sessions", level="warning", stream=stream)
    logging.getLogger("t").info("hidden")
    logging.getLogger("t").warning("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]


def test_text_format_is_one_readable_line() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    try:
        configure_logging(service="memory", fmt="text", stream=buffer)
        with bind_log_context(tenant_id="t1"):
            logging.getLogger("m").info("hello token=abc")
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
    line = buffer.getvalue().rstrip("\n")
    assert "\n" not in line
    assert "INFO" in line
    assert "memory m: hello token=[REDACTED]" in line
    assert line.endswith("tenant_id=t1")


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "json"), ("INFO", "xml")])
def test_unknown_level_or_format_is_rejected(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(service="x", level=level, fmt=fmt, stream=io.StringIO())
