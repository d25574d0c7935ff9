"""The server interceptor of every ContextIQ process: trace, log, count, translate errors.

:class:`RpcInterceptor` does, for each RPC and in this order (outermost first):

1. tracing: an OpenTelemetry SERVER span continuing the caller's trace (``traceparent``);
2. logging and metrics: one log line when the call ends (method, status code, duration), the
   request log scope the handler's own lines share, the RPC counters;
3. error translation: domain exceptions become statuses with rich details;
4. call guards (authentication and authorisation, see :class:`CallGuard`);
5. the handler.

The stages were once four nested interceptors, each building a new handler and an async
context manager per call; on the 2-core machine that chain cost about a sixth of the sessions
service's CPU per append. They now run in one coroutine, and the wrapped handler of a method is
built once and reused (per-call data, the metadata, is read from the servicer context).

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
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import grpc
from grpc_status import rpc_status
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ciq_runtime import metrics
from ciq_runtime.errors import ContextIQError, Internal, to_status
from ciq_runtime.logging import request_log_scope

__all__ = [
    "QUIET_SERVICES",
    "CallGuard",
    "Metadata",
    "RpcInterceptor",
    "RpcScope",
    "wrap_rpc_handler",
]

log = logging.getLogger(__name__)

#: Builds the async context manager an RPC runs inside, given its servicer context.
RpcScope = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]
#: Invocation metadata: ``(key, value)`` pairs; binary values (``-bin`` keys) are bytes.
Metadata = Sequence[tuple[str, str | bytes]]
_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

#: Services whose RPCs are logged at DEBUG and not traced: probes call them every few seconds.
QUIET_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")

_INTERNAL_MESSAGE = "internal error"
_NO_SPAN: Final = contextlib.nullcontext()


def _behavior(handler: grpc.RpcMethodHandler) -> tuple[Any, Callable[..., Any]]:
    """The handler's behaviour and the factory that builds a handler of the same kind."""
    if handler.request_streaming and handler.response_streaming:
        return handler.stream_stream, grpc.stream_stream_rpc_method_handler
    if handler.request_streaming:
        return handler.stream_unary, grpc.stream_unary_rpc_method_handler
    if handler.response_streaming:
        return handler.unary_stream, grpc.unary_stream_rpc_method_handler
    return handler.unary_unary, grpc.unary_unary_rpc_method_handler


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
    behavior, build = _behavior(handler)

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


@runtime_checkable
class CallGuard(Protocol):
    """A check every call of some methods passes before its handler runs (authentication).

    :class:`RpcInterceptor` runs guards inside its error translation, so a
    :class:`~ciq_runtime.errors.ContextIQError` raised by :meth:`enter` becomes the call's
    status, and inside its log scope, so what the guard adds to the request's log fields
    (the tenant) is on the final log line.
    """

    def guards(self, method: str) -> bool:
        """Whether calls of ``method`` (``/package.Service/Method``) go through :meth:`enter`."""
        ...

    async def enter(self, method: str, metadata: Metadata) -> AbstractContextManager[object]:
        """Check one call; return the context its handler runs in (e.g. the bound principal).

        Raises:
            ContextIQError: The call is refused.
        """
        ...


@dataclass(frozen=True, slots=True)
class _Plan:
    """What :class:`RpcInterceptor` does around the calls of one method (built once)."""

    method: str
    span_name: str | None  # None: not traced
    span_attributes: dict[str, str]
    level: int
    guards: tuple[CallGuard, ...]


class RpcInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Trace, log, count and translate the errors of every RPC; run the call guards.

    * Tracing: a SERVER span named ``package.Service/Method`` whose parent comes from the W3C
      ``traceparent`` metadata (sent by traced channels and the gateway), with ``rpc.*``
      attributes and ``rpc.grpc.status_code``; health and reflection calls get no span.
      Unlike opentelemetry-instrumentation-grpc's aio interceptor, this supports every
      handler shape the server has (``context.write()`` streams included).
    * Logging: one line per RPC when it ends, logged at INFO (DEBUG for quiet services) by
      the ``ciq_runtime.rpc`` logger with ``rpc_method``, ``grpc_code`` and ``duration_ms``,
      plus the ids the request added with :func:`ciq_runtime.logging.annotate_request` (the
      tenant). While the handler runs, ``rpc_method`` is bound to the log context so its own
      lines carry it too. The call is counted in :mod:`ciq_runtime.metrics`.
    * Errors: :class:`~ciq_runtime.errors.ContextIQError` → its code and message, with
      ``ErrorInfo`` (and ``BadRequest``/``RetryInfo``) in ``grpc-status-details-bin``. Any
      other exception → logged with its traceback, reported as INTERNAL with reason
      ``INTERNAL``, a generic message and an ``error_id`` that also appears in the log line;
      the exception text never reaches the client (it may hold SQL, paths or other tenants'
      data). ``grpc.aio.AbortError`` (an abort under way) and cancellation pass through.
    * Guards: each :class:`CallGuard` that guards the method, in order, innermost.
    """

    def __init__(
        self,
        *,
        guards: Sequence[CallGuard] = (),
        quiet_services: Collection[str] = QUIET_SERVICES,
        cache_handlers: bool = True,
    ) -> None:
        """Create the interceptor.

        Args:
            guards: Checks run before the handler, outermost first (authentication).
            quiet_services: Fully-qualified services whose calls get no span and whose log
                lines are at DEBUG.
            cache_handlers: Reuse the wrapped handler of a method for every call. Only valid
                when this is the last interceptor: an interceptor after it would otherwise
                no longer run.
        """
        self._guards = tuple(guards)
        self._quiet = frozenset(quiet_services)
        self._cache_handlers = cache_handlers
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._tracer = trace.get_tracer("ciq_runtime.grpc")
        self._log = logging.getLogger("ciq_runtime.rpc")

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the method's handler; unknown methods (``None``) pass through."""
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = self._wrap(method, handler)
        if self._cache_handlers:
            # Bounded: only methods the server serves get here (unknown ones are None).
            self._handlers[method] = wrapped
        return wrapped

    def _plan(self, method: str) -> _Plan:
        service, _, name = method.lstrip("/").partition("/")
        quiet = service in self._quiet
        return _Plan(
            method=method,
            span_name=None if quiet else f"{service}/{name}",
            span_attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            level=logging.DEBUG if quiet else logging.INFO,
            guards=tuple(g for g in self._guards if g.guards(method)),
        )

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        plan = self._plan(method)
        behavior, build = _behavior(handler)

        wrapped: Callable[..., Any]
        if inspect.isasyncgenfunction(behavior):

            async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                metadata = context.invocation_metadata() or ()
                started = time.perf_counter()
                code = grpc.StatusCode.UNKNOWN
                with self._span(plan, metadata), request_log_scope(rpc_method=method):
                    try:
                        try:
                            with await _enter(plan, metadata):
                                # aclosing: if the client goes away mid-stream, the handler's
                                # finally blocks run now rather than at garbage collection.
                                async with contextlib.aclosing(
                                    behavior(request, context)
                                ) as responses:
                                    async for response in responses:
                                        yield response
                        except grpc.aio.AbortError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
                            await _abort(context, method, exc)
                        code = _context_code(context) or grpc.StatusCode.OK
                    except grpc.aio.AbortError:
                        code = _context_code(context) or grpc.StatusCode.UNKNOWN
                        raise
                    except (asyncio.CancelledError, GeneratorExit):
                        # The client cancelled, its deadline passed, or the server is stopping.
                        code = grpc.StatusCode.CANCELLED
                        raise
                    finally:
                        self._finish(plan, code, started)

            wrapped = wrapped_stream
        elif inspect.iscoroutinefunction(behavior):

            async def wrapped_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                metadata = context.invocation_metadata() or ()
                started = time.perf_counter()
                code = grpc.StatusCode.UNKNOWN
                with self._span(plan, metadata), request_log_scope(rpc_method=method):
                    try:
                        try:
                            if plan.guards:
                                with await _enter(plan, metadata):
                                    response = await behavior(request, context)
                            else:
                                response = await behavior(request, context)
                        except grpc.aio.AbortError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
                            await _abort(context, method, exc)
                        code = _context_code(context) or grpc.StatusCode.OK
                        return response
                    except grpc.aio.AbortError:
                        code = _context_code(context) or grpc.StatusCode.UNKNOWN
                        raise
                    except (asyncio.CancelledError, GeneratorExit):
                        code = grpc.StatusCode.CANCELLED
                        raise
                    finally:
                        self._finish(plan, code, started)

            wrapped = wrapped_call
        else:
            return handler
        return build(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _span(self, plan: _Plan, metadata: Metadata) -> AbstractContextManager[object]:
        if plan.span_name is None:
            return _NO_SPAN
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        return self._tracer.start_as_current_span(
            plan.span_name,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=plan.span_attributes,
        )

    def _finish(self, plan: _Plan, code: grpc.StatusCode, started: float) -> None:
        seconds = time.perf_counter() - started
        metrics.rpc_finished(plan.method, code.name, seconds)
        _record_status(code)
        if self._log.isEnabledFor(plan.level):
            duration_ms = seconds * 1000
            self._log.log(
                plan.level,
                "%s %s %.1fms",
                plan.method,
                code.name,
                duration_ms,
                extra={
                    "rpc_method": plan.method,
                    "grpc_code": code.name,
                    "duration_ms": duration_ms,
                },
            )


async def _enter(plan: _Plan, metadata: Metadata) -> AbstractContextManager[object]:
    """Run the plan's guards; the context they bind, entered around the handler."""
    if not plan.guards:
        return _NO_SPAN
    if len(plan.guards) == 1:
        return await plan.guards[0].enter(plan.method, metadata)
    stack = contextlib.ExitStack()
    try:
        for guard in plan.guards:
            stack.enter_context(await guard.enter(plan.method, metadata))
    except BaseException:
        stack.close()
        raise
    return stack


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    """Report ``exc`` as the call's status; always raises ``grpc.aio.AbortError``."""
    if isinstance(exc, ContextIQError):
        await context.abort_with_status(rpc_status.to_status(to_status(exc)))
    error_id = uuid.uuid4().hex
    log.error(
        "unhandled exception in %s (error_id=%s)",
        method,
        error_id,
        exc_info=exc,
        extra={"rpc_method": method, "error_id": error_id},
    )
    internal = Internal(_INTERNAL_MESSAGE, reason="INTERNAL", metadata={"error_id": error_id})
    await context.abort_with_status(rpc_status.to_status(to_status(internal)))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _record_status(code: grpc.StatusCode) -> None:
    # The server span (opened by RpcInterceptor) ends without seeing abort_with_status, which
    # is how errors are reported: set the code on it here.
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))


def _context_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    # None until the handler sets a code or aborts.
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else None
