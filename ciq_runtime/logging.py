"""Structured logging: one JSON object per line, request context, secret redaction.

Every process calls :func:`configure_logging` once in ``main()``; libraries and services just
use ``logging.getLogger(__name__)``. Fields bound with :func:`bind_log_context` (tenant,
request id, RPC method) and the current OpenTelemetry trace/span ids are added to every record
logged inside the block, and anything that looks like a credential is masked before a handler
sees it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, TextIO
from urllib.parse import unquote, urlsplit

from ciq_runtime.settings import REDACTED

if TYPE_CHECKING:
    from ciq_runtime.settings import Settings

try:  # Tracing is optional: logs still work in a process without opentelemetry-api.
    from opentelemetry import trace as _otel_trace

    _HAVE_OTEL = True
except ImportError:  # pragma: no cover - opentelemetry-api is a dependency today
    _HAVE_OTEL = False

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "RedactionFilter",
    "TextFormatter",
    "annotate_request",
    "bind_log_context",
    "configure_logging",
    "current_log_context",
    "is_sensitive_key",
    "record_fields",
    "redact_text",
    "redact_value",
    "request_log_scope",
    "settings_secrets",
]

# A ContextVar has to live at module level to be shared by every task; it holds no process
# state of its own (each task sees its own copy), so it is not the global state STYLE forbids.
_LOG_CONTEXT: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "ciq_log_context", default=MappingProxyType({})
)

# The mutable fields of the current request (see request_log_scope); None outside one.
_REQUEST_FIELDS: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "ciq_request_fields", default=None
)

# Attribute under which ContextFilter stores bound fields on a record. Kept private so that
# bound fields can never overwrite LogRecord's own attributes (binding ``name=`` would).
_FIELDS_ATTR = "_ciq_fields"
# Marks the handler configure_logging installed, so a second call replaces it.
_HANDLER_MARK = "_ciq_handler"

# Everything a LogRecord carries by itself; the rest of its __dict__ came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    _FIELDS_ATTR,
}

_SENSITIVE_PARTS = frozenset(
    {"apikey", "authorization", "password", "passwd", "secret", "token", "credential",
     "credentials", "cookie"}
)  # fmt: skip
# ``key=value`` / ``"key": "value"`` in free text; the key is checked by is_sensitive_key in
# code. Keys and URL parts are matched possessively from the start of a run so that the
# patterns stay linear on long, unbroken input (a naive keyword pattern is cubic on it).
_KEY_VALUE_RE = re.compile(
    r"(?<![\w-])([\w-]++)(\s*[\"']?\s*[:=]\s*[\"']?)((?i:bearer\s+)?[^\s\"',;&)}\]]++)"
)
_API_KEY_RE = re.compile(r"ck_[A-Za-z0-9_-]{8,}")
# Model providers' key formats (OpenAI/Anthropic ``sk-``, Google ``AIza``, Groq ``gsk_``, xAI,
# Hugging Face) and bare JWTs (three base64url parts, the first two JSON objects).
_PROVIDER_KEY_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}"
    r"|(?:gsk|xai|hf)[_-][A-Za-z0-9]{16,})"
)
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# Known secret values shorter than this are not masked literally (too likely to match words).
_MIN_KNOWN_SECRET = 6
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD_RE = re.compile(
    r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*+://[^\s:/@]++:)([^\s@/]++)(@)"
)
_CAMEL_RE = re.compile(r"([a-z0-9])([A-Z])")


@contextmanager
def request_log_scope(**fields: object) -> Iterator[dict[str, object]]:
    """Open the log scope of one request (an RPC, a job): fields found later join it.

    Like :func:`bind_log_context`, but the fields live in a mutable dict that
    :func:`annotate_request` can extend from deeper in the request (the auth interceptor
    adds the tenant once it has verified the credentials). Every line logged in the request
    after that, including the final one logged by the code that opened the scope, carries them.

    Args:
        **fields: Initial fields.

    Yields:
        The scope's fields (read them for the final log line).
    """
    scope: dict[str, object] = dict(fields)
    token = _REQUEST_FIELDS.set(scope)
    try:
        with bind_log_context(**fields):
            yield scope
    finally:
        _REQUEST_FIELDS.reset(token)


def annotate_request(**fields: object) -> None:
    """Add ids (``tenant_id``, ``session_id``, ...) to the current request's log lines and span.

    The fields go into the enclosing :func:`request_log_scope` (no-op outside one) and, as
    ``contextiq.<name>`` attributes, onto the current OpenTelemetry span. ``None`` values are
    skipped.

    Args:
        **fields: Names and values.
    """
    fields = {k: v for k, v in fields.items() if v is not None and v != ""}
    scope = _REQUEST_FIELDS.get()
    if scope is not None:
        scope.update(fields)
    if _HAVE_OTEL:
        span = _otel_trace.get_current_span()
        for key, value in fields.items():
            span.set_attribute(f"contextiq.{key}", str(value))


@contextmanager
def bind_log_context(**fields: object) -> Iterator[None]:
    """Add fields to every log record emitted inside the block (in this task and its children).

    Example::

        with bind_log_context(tenant_id=tenant, request_id=rid):
            log.info("session created")  # carries tenant_id and request_id

    Args:
        **fields: Names and values to add; inner bindings override outer ones.

    Yields:
        Nothing; the fields are removed again on exit.
    """
    token = _LOG_CONTEXT.set(MappingProxyType({**_LOG_CONTEXT.get(), **fields}))
    try:
        yield
    finally:
        _LOG_CONTEXT.reset(token)


def current_log_context() -> Mapping[str, object]:
    """Return the fields the current log lines carry: request scope, then bound context.

    Returns:
        A read-only mapping (empty outside any block): the fields of the enclosing
        :func:`request_log_scope` (with what :func:`annotate_request` added), overridden by
        those of the enclosing :func:`bind_log_context` blocks.
    """
    request = _REQUEST_FIELDS.get()
    if not request:
        return _LOG_CONTEXT.get()
    return MappingProxyType({**request, **_LOG_CONTEXT.get()})


def is_sensitive_key(key: str) -> bool:
    """Tell whether a field name looks like it holds a credential.

    Args:
        key: A field name in any of snake_case, kebab-case or camelCase.

    Returns:
        True for names such as ``api_key``, ``X-Api-Key``, ``authorization``, ``jwt_secret``,
        ``accessToken``, ``password``; False for e.g. ``max_tokens``.
    """
    snake = _CAMEL_RE.sub(r"\1_\2", key).lower().replace("-", "_")
    return "api_key" in snake or not _SENSITIVE_PARTS.isdisjoint(snake.split("_"))


def redact_text(text: str) -> str:
    """Mask credentials in free text.

    Masks ``ck_`` API keys, model providers' keys (``sk-…``, ``AIza…``, ``gsk_…``), JWTs,
    ``Bearer`` tokens, passwords inside URLs and the value of ``key=value`` pairs whose key
    looks sensitive.

    Args:
        text: Any text (a log message, an exception, a traceback).

    Returns:
        The text with secrets replaced by ``[REDACTED]``.
    """
    text = _KEY_VALUE_RE.sub(_redact_key_value, text)
    text = _URL_PASSWORD_RE.sub(rf"\1{REDACTED}\3", text)
    text = _BEARER_RE.sub(rf"\1 {REDACTED}", text)
    text = _JWT_RE.sub(REDACTED, text)
    text = _PROVIDER_KEY_RE.sub(REDACTED, text)
    return _API_KEY_RE.sub(REDACTED, text)


def _redact_key_value(match: re.Match[str]) -> str:
    key, separator, _value = match.groups()
    return f"{key}{separator}{REDACTED}" if is_sensitive_key(key) else match.group(0)


def redact_value(value: object) -> object:
    """Mask credentials in a structured value (``extra=`` fields, bound context).

    Mapping entries with sensitive keys are replaced whole; strings are passed through
    :func:`redact_text`; containers are walked. Other objects are turned into their ``str`` first
    because that is how they would be serialised anyway, and their text may hold a secret.

    Args:
        value: Any value.

    Returns:
        A redacted copy (the input is not modified).
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if is_sensitive_key(str(k)) else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    return redact_text(str(value))


def _trace_fields() -> dict[str, str]:
    if not _HAVE_OTEL:
        return {}
    ctx = _otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """Return the non-standard fields of a record: bound context, trace ids, then ``extra=``.

    Args:
        record: A record that went through :class:`ContextFilter`.

    Returns:
        Field name to value; explicit ``extra=`` values win over bound context.
    """
    fields: dict[str, object] = dict(getattr(record, _FIELDS_ATTR, {}))
    fields.update(_extras(record))
    return fields


class ContextFilter(logging.Filter):
    """Attach the bound log context and the current trace/span ids to each record.

    It runs in the thread and task that called the logger, which is where the context lives.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        if not hasattr(record, _FIELDS_ATTR):
            request = _REQUEST_FIELDS.get() or {}
            setattr(record, _FIELDS_ATTR, {**request, **_LOG_CONTEXT.get(), **_trace_fields()})
        return True


class RedactionFilter(logging.Filter):
    """Mask credentials in a record's message, arguments, extras, bound fields and traceback.

    It rewrites the record in place so that every handler after it, and any formatter,
    only ever sees the masked text. Applying it twice is harmless. Besides the patterns of
    :func:`redact_text`, the process's own secrets (``secrets``: the JWT secret, the LLM key,
    database passwords, see :func:`settings_secrets`) are masked wherever they appear, whatever
    their format.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        """Create the filter.

        Args:
            secrets: Literal values to mask (shorter than 6 characters are ignored).
        """
        super().__init__()
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted(
            {s for s in secrets if s and len(s) >= _MIN_KNOWN_SECRET}, key=len, reverse=True
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return redact_text(text)

    def _redact_value(self, value: object) -> object:
        if not self._secrets:
            return redact_value(value)
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, Mapping):
            return {
                str(k): REDACTED if is_sensitive_key(str(k)) else self._redact_value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self._redact_value(v) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self._redact(str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - must not raise into the caller of log.info()
            # A bad format string: leave the record alone so that the handler reports it the
            # usual way (Handler.handleError) instead of the logging call raising.
            return True
        record.msg = self._redact(message)
        record.args = None
        for key, value in _extras(record).items():
            setattr(record, key, REDACTED if is_sensitive_key(key) else self._redact_value(value))
        fields = getattr(record, _FIELDS_ATTR, None)
        if fields:
            setattr(record, _FIELDS_ATTR, self._redact_value(fields))
        if record.exc_info and not record.exc_text:
            # Formatter.format reuses exc_text when set, so this is the traceback that is shown.
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


def settings_secrets(settings: Settings) -> list[str]:
    """The secret values a process's settings hold, for :func:`configure_logging`'s ``secrets``.

    Args:
        settings: The process settings.

    Returns:
        The JWT secret, bootstrap API key, LLM key and the passwords of the database, NATS and
        Qdrant URLs that are set.
    """
    found = [
        settings.jwt_secret,
        settings.bootstrap_api_key,
        settings.llm_api_key,
        settings.qdrant_api_key,
        settings.embedding_api_key,
    ]
    for url in (settings.database_url, settings.nats_url, settings.qdrant_url):
        for part in (url or "").split(","):
            try:
                password = urlsplit(part.strip()).password
            except ValueError:
                continue
            found.append(unquote(password) if password else None)
            found.append(password)
    return [value for value in dict.fromkeys(found) if value]


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or None


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line.

    Keys: ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``service``, ``logger``,
    ``message``, then ``trace_id``/``span_id`` inside a span, bound context, ``extra=`` fields,
    ``exception`` and ``stack`` when present. The fixed keys win over fields of the same name.
    """

    def __init__(self, *, service: str) -> None:
        """Create the formatter.

        Args:
            service: Value of the ``service`` key on every line.
        """
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line (without the trailing newline)."""
        payload: dict[str, object] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            payload.setdefault(key, value)
        exception = _exception_text(self, record)
        if exception:
            payload["exception"] = exception
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-oriented single-line format for local development: fields as ``key=value``."""

    def __init__(self, *, service: str) -> None:
        """Create the formatter.

        Args:
            service: Shown after the level on every line.
        """
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as text; a traceback, if any, follows on the next lines."""
        line = (
            f"{_timestamp(record)} {record.levelname:<8} {self._service} {record.name}: "
            f"{record.getMessage()}"
        )
        fields = record_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        exception = _exception_text(self, record)
        if exception:
            line += "\n" + exception
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (not text or any(c.isspace() for c in text)) else text


_CHATTY_LOGGERS = ("alembic.runtime.plugins", "alembic.runtime.migration")


def configure_logging(
    *,
    service: str,
    level: str = "INFO",
    fmt: str = "json",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Send all logging to one stream handler with context, redaction and the chosen format.

    Calling it again replaces the handler it installed before (it never stacks handlers) and
    leaves handlers installed by others (pytest's, for instance) alone.

    Args:
        service: Service name written on every record.
        level: Root level name (``DEBUG``, ``INFO``, ...), case-insensitive.
        fmt: ``"json"`` (one object per line, for collectors) or ``"text"`` (for people).
        stream: Where to write; ``sys.stderr`` when omitted.
        secrets: Values masked wherever they appear (:func:`settings_secrets`).

    Raises:
        ValueError: If ``level`` or ``fmt`` is unknown.
    """
    level_no = logging.getLevelNamesMapping().get(level.upper())
    if level_no is None:
        raise ValueError(f"unknown log level {level!r}")
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(service=service)
    elif fmt == "text":
        formatter = TextFormatter(service=service)
    else:
        raise ValueError(f"unknown log format {fmt!r}: expected 'json' or 'text'")

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter)
    # Order matters: context is attached first so that redaction also covers bound fields.
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactionFilter(secrets))

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_no)
    # Alembic announces every plugin and migration context at INFO on each start; what a
    # service migrated is logged by ciq_runtime.db instead.
    for chatty in _CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(max(level_no, logging.WARNING))
