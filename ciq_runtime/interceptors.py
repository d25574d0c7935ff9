"""Server interceptors: error translation, and one log line plus metrics per RPC.

Order (outermost first, as passed to ``grpc.aio.server``): ``LoggingInterceptor``, then
``ErrorInterceptor``, then anything else (auth). Logging therefore sees the final status code,
and errors raised by inner interceptors' wrappers are translated like a handler's own.

Only ``async def`` handlers (coroutines and async generators) are wrapped. A plain ``def``
handler is passed through untouched, because grpc.aio runs those on its thread pool and an
async wrapper would move them onto the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ciq_runtime import metrics
from ciq_runtime.errors import ContextIQError, Internal, to_status
from ciq_runtime.logging import request_log_scope

__all__ = [
    "QUIET_SERVICES",
    "ErrorInterceptor",
    "LoggingInterceptor",
    "RpcScope",
    "TracingInterceptor",
    "wrap_rpc_handler",
]

log = logging.getLogger(__name__)

#: Builds the async context manager an RPC runs inside, given its servicer context.
RpcScope = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]
_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

#: Services whose RPCs are logged at DEBUG: probes call them every few seconds.
QUIET_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")

_INTERNAL_MESSAGE = "internal error"


def wrap_rpc_handler(handler: grpc.RpcMethodHandler, scope: RpcScope) -> grpc.RpcMethodHandler:
    """Return a handler of the same kind whose behaviour runs inside ``scope(context)``.

    The request deserializer and response serializer are kept, so the wrapped handler is
    interchangeable with the original. Streaming responses are produced inside the scope, so
    an exception raised mid-stream reaches it.

    Args:
        handler: The handler returned by the interceptor's continuation.
        scope: Factory of the async context manager to run the RPC in; it may translate or
            observe exceptions (it sees ``grpc.aio.AbortError`` when the RPC was aborted).

    Returns:
        The wrapped handler, or ``handler`` itself for synchronous behaviours.
    """
    if handler.request_streaming and handler.response_streaming:
        behavior, build = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, build = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, build = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, build = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):

        async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # aclosing: if the client goes away mid-stream, the handler's own finally blocks
            # run now rather than whenever the generator is garbage-collected.
            async with (
                scope(context),
                contextlib.aclosing(behavior(request, context)) as responses,
            ):
                async for response in responses:
                    yield response

        wrapped = wrapped_stream
    elif inspect.iscoroutinefunction(behavior):

        async def wrapped_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await behavior(request, context)
            # Unreachable unless the scope swallowed the exception; the scopes here never do.
            raise AssertionError("RPC scope suppressed an exception")  # pragma: no cover

        wrapped = wrapped_call
    else:
        return handler
    return build(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Run each RPC inside an OpenTelemetry SERVER span continuing the caller's trace.

    The parent comes from the W3C ``traceparent`` metadata (sent by traced channels and the
    gateway). Health and reflection calls are not traced (probes call them every few seconds).
    Unlike opentelemetry-instrumentation-grpc's aio interceptor, this one supports every
    handler shape the server has (``context.write()`` streams, synchronous handlers pass
    through untouched), because it wraps through :func:`wrap_rpc_handler`.
    """

    def __init__(self, *, untraced_services: Collection[str] = QUIET_SERVICES) -> None:
        """Create the interceptor.

        Args:
            untraced_services: Fully-qualified services whose calls get no span.
        """
        self._untraced = frozenset(untraced_services)
        self._tracer = trace.get_tracer("ciq_runtime.grpc")

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the method's handler; unknown methods (``None``) pass through."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        service, _, name = method.lstrip("/").partition("/")
        if service in self._untraced:
            return handler
        carrier = {
            key: value
            for key, value in (handler_call_details.invocation_metadata or ())
            if isinstance(value, str)
        }
        return wrap_rpc_handler(handler, lambda _context: self._span(service, name, carrier))

    @asynccontextmanager
    async def _span(
        self, service: str, method: str, carrier: dict[str, str]
    ) -> AsyncIterator[None]:
        with self._tracer.start_as_current_span(
            f"{service}/{method}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        ):
            yield


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Turn exceptions from handlers into gRPC statuses with rich details.

    * :class:`~ciq_runtime.errors.ContextIQError` → its code and message, with
      ``ErrorInfo`` (and ``BadRequest``/``RetryInfo``) in ``grpc-status-details-bin``.
    * Any other exception → logged with its traceback, reported as INTERNAL with reason
      ``INTERNAL``, a generic message and an ``error_id`` that also appears in the log line;
      the exception text never reaches the client (it may hold SQL, paths or other tenants'
      data).
    * ``grpc.aio.AbortError`` (an abort already under way) and cancellation pass through.
    """

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the method's handler; unknown methods (``None``) pass through."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        return wrap_rpc_handler(handler, lambda context: _translate_errors(context, method))


@asynccontextmanager
async def _translate_errors(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    try:
        yield
    except ContextIQError as exc:
        await context.abort_with_status(rpc_status.to_status(to_status(exc)))
    except grpc.aio.AbortError:
        raise
    except Exception:
        error_id = uuid.uuid4().hex
        log.exception(
            "unhandled exception in %s (error_id=%s)",
            method,
            error_id,
            extra={"rpc_method": method, "error_id": error_id},
        )
        internal = Internal(_INTERNAL_MESSAGE, reason="INTERNAL", metadata={"error_id": error_id})
        await context.abort_with_status(rpc_status.to_status(to_status(internal)))


class LoggingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Log one line per RPC when it ends: method, status code and duration; count it.

    The line is logged at INFO (DEBUG for ``quiet_services``) by the ``ciq_runtime.rpc``
    logger with the fields ``rpc_method``, ``grpc_code`` and ``duration_ms``, plus the ids
    the request added with :func:`ciq_runtime.logging.annotate_request` (the tenant). While
    the handler runs, ``rpc_method`` is bound to the log context so its own lines carry it
    too. The call is also counted in :mod:`ciq_runtime.metrics` (requests by method and code,
    latency) and its status code is set on the current OpenTelemetry span.
    """

    def __init__(self, *, quiet_services: Collection[str] = QUIET_SERVICES) -> None:
        """Create the interceptor.

        Args:
            quiet_services: Fully-qualified services whose RPCs are logged at DEBUG.
        """
        self._quiet = frozenset(quiet_services)
        self._log = logging.getLogger("ciq_runtime.rpc")

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the method's handler; unknown methods (``None``) pass through."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        service = method.lstrip("/").partition("/")[0]
        level = logging.DEBUG if service in self._quiet else logging.INFO
        return wrap_rpc_handler(handler, lambda context: self._observe(context, method, level))

    @asynccontextmanager
    async def _observe(
        self, context: grpc.aio.ServicerContext, method: str, level: int
    ) -> AsyncIterator[None]:
        started = time.perf_counter()
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
        with request_log_scope(rpc_method=method):
            try:
                yield
                code = _context_code(context) or grpc.StatusCode.OK
            except grpc.aio.AbortError:
                code = _context_code(context) or grpc.StatusCode.UNKNOWN
                raise
            except (asyncio.CancelledError, GeneratorExit):
                # The client cancelled, its deadline passed, or the server is stopping.
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                seconds = time.perf_counter() - started
                metrics.rpc_finished(method, code.name, seconds)
                _record_status(code)
                duration_ms = seconds * 1000
                self._log.log(
                    level,
                    "%s %s %.1fms",
                    method,
                    code.name,
                    duration_ms,
                    extra={
                        "rpc_method": method,
                        "grpc_code": code.name,
                        "duration_ms": duration_ms,
                    },
                )


def _record_status(code: grpc.StatusCode) -> None:
    # The OpenTelemetry server span (outside this interceptor) does not see abort_with_status,
    # which is how ErrorInterceptor reports errors: set the code on it here.
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))


def _context_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    # None until the handler sets a code or aborts.
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else None
