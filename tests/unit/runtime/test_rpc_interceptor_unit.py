"""RpcInterceptor builds a method's wrapped handler once, unless interceptors follow it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import grpc

from ciq_runtime.interceptors import CallGuard, Metadata, RpcInterceptor
from ciq_runtime.server import default_interceptors

METHOD = "/contextiq.sessions.v1.SessionService/GetSession"


@dataclass(frozen=True)
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class Guard:
    def guards(self, method: str) -> bool:
        return True

    async def enter(self, method: str, metadata: Metadata) -> AbstractContextManager[object]:
        return nullcontext()


class Plain(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        return await continuation(details)


async def handle(request: bytes, context: Any) -> bytes:
    return request


class Continuation:
    def __init__(self, handler: grpc.RpcMethodHandler | None) -> None:
        self.calls = 0
        self._handler = handler

    async def __call__(self, details: Any) -> grpc.RpcMethodHandler | None:
        self.calls += 1
        return self._handler


async def test_the_wrapped_handler_is_built_once_per_method() -> None:
    interceptor = RpcInterceptor(guards=[Guard()])
    continuation = Continuation(grpc.unary_unary_rpc_method_handler(handle))
    first = await interceptor.intercept_service(continuation, Details(METHOD))
    second = await interceptor.intercept_service(continuation, Details(METHOD))
    assert first is second
    assert first is not None
    assert first.unary_unary is not handle
    assert continuation.calls == 1


async def test_unknown_methods_pass_through_and_are_not_remembered() -> None:
    interceptor = RpcInterceptor()
    continuation = Continuation(None)
    assert await interceptor.intercept_service(continuation, Details("/x.Y/Z")) is None
    assert await interceptor.intercept_service(continuation, Details("/x.Y/Z")) is None
    assert continuation.calls == 2


async def test_interceptors_after_it_still_run_on_every_call() -> None:
    chain = default_interceptors(Guard(), Plain())
    assert len(chain) == 2
    assert isinstance(chain[1], Plain)
    continuation = Continuation(grpc.unary_unary_rpc_method_handler(handle))
    await chain[0].intercept_service(continuation, Details(METHOD))
    await chain[0].intercept_service(continuation, Details(METHOD))
    assert continuation.calls == 2


def test_leading_guards_run_inside_the_rpc_interceptor() -> None:
    guard = Guard()
    assert isinstance(guard, CallGuard)
    chain = default_interceptors(guard)
    assert len(chain) == 1
    assert isinstance(chain[0], RpcInterceptor)
