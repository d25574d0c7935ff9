"""Spans for database statements: SQLAlchemy engines and raw asyncpg connections.

One CLIENT span per statement, child of whatever span is current (the RPC, the job), named for
the statement's first keyword (``SELECT``, ``INSERT``, ...) with the OpenTelemetry database
attributes (``db.system.name``, ``db.namespace``, ``db.operation.name``, ``db.query.text``)
plus ``contextiq.tenant_id`` when a principal is bound. Statements are parameterised, so the
query text carries no values. Tracing costs nothing measurable when no tracer provider is
installed: the spans are then non-recording.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from ciq_runtime.principal import maybe_principal

__all__ = ["TracedConnection", "instrument_engine", "statement_span"]

_MAX_QUERY_CHARS: Final = 2000
_SPAN_ATTR: Final = "_ciq_db_span"
_tracer: Final = trace.get_tracer("ciq_runtime.db")


def _operation(statement: str) -> str:
    head = statement.lstrip().split(None, 1)
    return head[0].upper() if head else "SQL"


@functools.lru_cache(maxsize=512)
def _statement_attributes(statement: str, database: str | None) -> tuple[str, dict[str, Any]]:
    # The hot paths run the same few statements: their name and attributes are worked out once
    # (the sessions append's text is 1.5 kB, and split/slice copy it every time otherwise).
    operation = _operation(statement)
    attributes: dict[str, Any] = {
        "db.system.name": "postgresql",
        "db.operation.name": operation,
        "db.query.text": statement[:_MAX_QUERY_CHARS],
    }
    if database:
        attributes["db.namespace"] = database
    return operation, attributes


def statement_span(statement: str, *, database: str | None) -> Span:
    """Start (not activate) the span of one statement; the caller ends it.

    Args:
        statement: The SQL text (with placeholders).
        database: The database name, if known.

    Returns:
        The started span.
    """
    operation, attributes = _statement_attributes(statement, database)
    principal = maybe_principal()
    if principal is not None:
        attributes = {**attributes, "contextiq.tenant_id": principal.tenant_id}
    return _tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attributes)


def _fail(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def instrument_engine(engine: AsyncEngine) -> AsyncEngine:
    """Add a span per statement to an async engine (idempotent).

    Args:
        engine: The engine (from :func:`ciq_runtime.db.create_engine`).

    Returns:
        The same engine.
    """
    sync_engine = engine.sync_engine
    if getattr(sync_engine, "_ciq_traced", False):
        return engine
    database = sync_engine.url.database

    def before(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        # SQLAlchemy's greenlets carry the caller's contextvars, so the current span is the
        # RPC's or the job's.
        if context is not None:
            setattr(context, _SPAN_ATTR, statement_span(statement, database=database))

    def after(
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        span = getattr(context, _SPAN_ATTR, None)
        if span is not None:
            span.end()
            setattr(context, _SPAN_ATTR, None)

    def on_error(exception_context: ExceptionContext) -> None:
        span = getattr(exception_context.execution_context, _SPAN_ATTR, None)
        if span is not None:
            _fail(span, exception_context.original_exception)
            span.end()
            setattr(exception_context.execution_context, _SPAN_ATTR, None)

    event.listen(sync_engine, "before_cursor_execute", before)
    event.listen(sync_engine, "after_cursor_execute", after)
    event.listen(sync_engine, "handle_error", on_error)
    sync_engine._ciq_traced = True  # type: ignore[attr-defined]  # marks "already listening"
    return engine


class TracedConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no stubs
    """An asyncpg connection with a span per ``execute``/``fetch*`` call.

    Use it as ``asyncpg.connect(..., connection_class=TracedConnection)``.
    """

    def _span(self, query: str) -> Span:
        params = getattr(self, "_params", None)
        return statement_span(query, database=getattr(params, "database", None) or None)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """``asyncpg.Connection.execute`` in a span."""
        with trace.use_span(self._span(query), end_on_exit=True, record_exception=True):
            return await super().execute(query, *args, **kwargs)

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> Any:
        """``asyncpg.Connection.executemany`` in a span."""
        with trace.use_span(self._span(command), end_on_exit=True, record_exception=True):
            return await super().executemany(command, args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """``asyncpg.Connection.fetch`` in a span."""
        with trace.use_span(self._span(query), end_on_exit=True, record_exception=True):
            return await super().fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """``asyncpg.Connection.fetchrow`` in a span."""
        with trace.use_span(self._span(query), end_on_exit=True, record_exception=True):
            return await super().fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """``asyncpg.Connection.fetchval`` in a span."""
        with trace.use_span(self._span(query), end_on_exit=True, record_exception=True):
            return await super().fetchval(query, *args, **kwargs)
