"""The ASGI endpoint that turns an HTTP/JSON request into a gRPC call and back.

Everything that can be is precomputed per route (see ``routes``); per request the work is: match
the route, read the body, build the message, call, encode. Every failure becomes the REST error
envelope; an unexpected exception is logged and answered with a generic INTERNAL error, never a
traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qsl

import grpc
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import (
    JSON_MEDIA_TYPE,
    GatewayError,
    error_from_rpc,
    internal_error,
    invalid_argument,
)
from gateway.forwarding import (
    IncomingHeaders,
    Metadata,
    call_timeout,
    metadata_to_headers,
    read_headers,
)
from gateway.hooks import HookContext, RequestHook
from gateway.json_output import JsonEncoder
from gateway.middleware import RequestInfo, request_info
from gateway.request_builder import build_request
from gateway.router import Router
from gateway.routes import Route
from gateway.streaming import NDJSON_MEDIA_TYPE, StreamResponse
from gateway.upstream import UpstreamPool

_log = logging.getLogger(__name__)

_JSON_TYPES: Final = frozenset({"application/json"})
_JSON_CONTENT_TYPE: Final = (b"content-type", JSON_MEDIA_TYPE.encode())


class _ClientGoneError(Exception):
    """The client disconnected before the request body was read."""


class Transcoder:
    """Serves every bound RPC; mounted at ``/`` after the gateway's own endpoints."""

    def __init__(
        self,
        *,
        router: Router,
        pool: UpstreamPool,
        encoder: JsonEncoder,
        request_timeout_s: float,
        max_body_bytes: int,
        hooks: Sequence[RequestHook] = (),
    ) -> None:
        """Creates the endpoint.

        Args:
            router: The routes.
            pool: Upstream channels.
            encoder: JSON encoder.
            request_timeout_s: Deadline of unary calls when the client sets none. Streams have
                no default deadline: they last as long as the client listens.
            max_body_bytes: Largest request body accepted (413 above).
            hooks: Policies run, in order, before each call.
        """
        self._router = router
        self._pool = pool
        self._encoder = encoder
        self._timeout = request_timeout_s
        self._max_body = max_body_bytes
        self._hooks = tuple(hooks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serves one HTTP request (a WebSocket is refused: nothing is bound to one)."""
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        info = request_info(scope)
        response: ASGIApp
        try:
            response = await self._handle(scope, receive, info)
        except GatewayError as exc:
            response = exc.to_response(info.trace.trace_id)
        except _ClientGoneError:
            return
        except Exception:  # noqa: BLE001 - the contract: never a traceback, always the envelope
            _log.exception(
                "unexpected error serving %s %s (trace_id=%s)",
                scope["method"],
                scope["path"],
                info.trace.trace_id,
            )
            response = internal_error().to_response(info.trace.trace_id)
        await response(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, info: RequestInfo) -> ASGIApp:
        method: str = scope["method"]
        raw_path = _raw_path(scope)
        found = self._router.match(method, raw_path)
        route = found.route
        info.route = route.label
        headers = read_headers(scope["headers"])
        body = await _read_body(receive, limit=self._max_body)
        if body and route.binding.body:
            _check_json(headers)
        query = _query(scope)
        request = build_request(route, path_values=found.path_values, query=query, body=body)
        metadata = list(headers.metadata)
        metadata.append(("traceparent", info.trace.traceparent))
        if info.trace.tracestate:
            metadata.append(("tracestate", info.trace.tracestate))
        for hook in self._hooks:
            await hook(
                HookContext(
                    route=route,
                    http_method=method,
                    path=scope["path"],
                    headers=Headers(scope=scope),
                    client=scope.get("client"),
                    metadata=metadata,
                )
            )
        if route.binding.streaming:
            return await self._stream(route, request, headers, metadata, info)
        timeout = call_timeout(headers, self._timeout)
        call = self._pool.unary_unary(route)(request, timeout=timeout, metadata=metadata)
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None
        payload = (
            self._encoder.field_value(reply, route.response_field)
            if route.response_field is not None
            else self._encoder.to_dict(reply)
        )
        body = self._encoder.encode(payload)
        response_headers = [(b"content-length", b"%d" % len(body)), _JSON_CONTENT_TYPE]
        extra = metadata_to_headers(await call.initial_metadata(), await call.trailing_metadata())
        response_headers.extend(
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra
        )
        return _JsonReply(body, response_headers)

    async def _stream(
        self,
        route: Route,
        request: Any,
        headers: IncomingHeaders,
        metadata: Metadata,
        info: RequestInfo,
    ) -> ASGIApp:
        # The first message (or the end of the call) is awaited before answering, so a call
        # that fails at once gets a real HTTP error status rather than a 200 and an error event.
        timeout = call_timeout(headers, None)
        call = self._pool.unary_stream(route)(request, timeout=timeout, metadata=metadata)
        try:
            first = await call.read()
            initial = await call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise _upstream_error(exc) from None
        except BaseException:
            call.cancel()
            raise
        return StreamResponse(
            call=call,
            first=first,
            route=route,
            encoder=self._encoder,
            ndjson=NDJSON_MEDIA_TYPE in headers.accept,
            headers=metadata_to_headers(initial),
            trace_id=info.trace.trace_id,
        )


class _JsonReply:
    """A 200 JSON response as two ASGI messages (what Starlette's Response sends, minus its
    header bookkeeping)."""

    __slots__ = ("_body", "_headers")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._body = body
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body})


def _upstream_error(exc: grpc.aio.AioRpcError) -> GatewayError:
    error = error_from_rpc(exc)
    for name, value in metadata_to_headers(exc.initial_metadata(), exc.trailing_metadata()):
        error.headers.setdefault(name, value)
    return error


def _raw_path(scope: Scope) -> str:
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        path: str = scope["path"]
        return path
    # Some servers keep the query string in raw_path; the query is read from query_string.
    return raw.split(b"?", 1)[0].decode("latin-1")


def _query(scope: Scope) -> list[tuple[str, str]]:
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return []
    try:
        return parse_qsl(
            raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        raise invalid_argument("the query string is not valid UTF-8") from None


def _check_json(headers: IncomingHeaders) -> None:
    content_type = headers.content_type
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise invalid_argument(
            f"Content-Type must be application/json for a request body, not {content_type!r}"
            if content_type
            else "a request body needs Content-Type: application/json"
        )


async def _read_body(receive: Receive, *, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                # RESOURCE_EXHAUSTED is gRPC's code for an oversized message; 413 says it in HTTP.
                raise GatewayError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the request body is larger than {limit} bytes",
                    status=413,
                )
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
