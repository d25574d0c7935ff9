"""wrap_rpc_handler keeps the handler kind and its (de)serializers; sync handlers pass through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from ciq_runtime.interceptors import wrap_rpc_handler


@asynccontextmanager
async def nothing(context: Any) -> AsyncIterator[None]:
    yield


async def unary(request: bytes, context: Any) -> bytes:
    return request


async def streaming(request: Any, context: Any) -> AsyncIterator[bytes]:
    yield b""


def serialize(value: bytes) -> bytes:
    return value


@pytest.mark.parametrize(
    ("factory", "behavior", "attribute", "request_streaming", "response_streaming"),
    [
        (grpc.unary_unary_rpc_method_handler, unary, "unary_unary", False, False),
        (grpc.unary_stream_rpc_method_handler, streaming, "unary_stream", False, True),
        (grpc.stream_unary_rpc_method_handler, unary, "stream_unary", True, False),
        (grpc.stream_stream_rpc_method_handler, streaming, "stream_stream", True, True),
    ],
)
def test_kind_and_serializers_are_preserved(
    factory: Any,
    behavior: Any,
    attribute: str,
    request_streaming: bool,
    response_streaming: bool,
) -> None:
    handler = factory(behavior, request_deserializer=serialize, response_serializer=serialize)
    wrapped = wrap_rpc_handler(handler, nothing)
    assert wrapped is not handler
    assert (wrapped.request_streaming, wrapped.response_streaming) == (
        request_streaming,
        response_streaming,
    )
    assert getattr(wrapped, attribute) is not behavior
    assert wrapped.request_deserializer is serialize
    assert wrapped.response_serializer is serialize


def test_sync_handlers_pass_through_untouched() -> None:
    def sync_unary(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(sync_unary)
    assert wrap_rpc_handler(handler, nothing) is handler
