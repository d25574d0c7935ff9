"""Server-streaming RPCs as Server-Sent Events (or NDJSON when the client asks for it).

Each message is one event, ``data: <json>`` (preceded by ``id: <id>`` when the message has a
scalar ``id`` field, so a reconnecting client can resume with it); an error after the stream
started is a final ``event: error`` whose data is the REST error envelope. With
``Accept: application/x-ndjson`` each message is one JSON line and an error is a last line
holding the envelope. When the client disconnects the gRPC call is cancelled at once, even
while the service is idle between messages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import grpc
from google.protobuf.message import Message
from starlette.types import Receive, Scope, Send

from gateway.errors import error_from_rpc
from gateway.json_output import JsonEncoder
from gateway.routes import Route

_log = logging.getLogger(__name__)

SSE_MEDIA_TYPE: Final = "text/event-stream"
NDJSON_MEDIA_TYPE: Final = "application/x-ndjson"


class StreamResponse:
    """An ASGI response relaying an already started server-streaming call."""

    def __init__(
        self,
        *,
        call: Any,
        first: Message,
        route: Route,
        encoder: JsonEncoder,
        ndjson: bool,
        headers: list[tuple[str, str]],
        trace_id: str,
    ) -> None:
        """Prepares the response.

        Args:
            call: The grpc.aio server-streaming call.
            first: The call's first message, already read.
            route: The route, for the message id field.
            encoder: The JSON encoder.
            ndjson: NDJSON instead of SSE.
            headers: Extra response headers (trace id, metadata).
            trace_id: The request's trace id, for the error envelope.
        """
        self._call = call
        self._first = first
        self._route = route
        self._encoder = encoder
        self._ndjson = ndjson
        self._trace_id = trace_id
        media_type = NDJSON_MEDIA_TYPE if ndjson else SSE_MEDIA_TYPE
        self._headers = [
            (b"content-type", f"{media_type}; charset=utf-8".encode()),
            (b"cache-control", b"no-cache"),
            # Proxies such as nginx would otherwise buffer the events.
            (b"x-accel-buffering", b"no"),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Sends the stream until the call ends or the client goes away."""
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        pump = asyncio.create_task(self._pump(send))
        watch = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._call.cancel()  # a no-op when the call already ended
            for task in (pump, watch):
                task.cancel()
            results = await asyncio.gather(pump, watch, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, OSError):
                _log.error("stream %s failed", self._route.label, exc_info=result)

    async def _pump(self, send: Send) -> None:
        message: Any = self._first
        while message is not grpc.aio.EOF:
            await send(
                {"type": "http.response.body", "body": self._event(message), "more_body": True}
            )
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                envelope = error_from_rpc(exc).envelope(self._trace_id)
                await send(
                    {"type": "http.response.body", "body": self._error(envelope), "more_body": True}
                )
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _event(self, message: Message) -> bytes:
        data = self._encoder.encode(self._encoder.to_dict(message))
        if self._ndjson:
            return data + b"\n"
        id_field = self._route.stream_id_field
        if id_field is not None:
            value = getattr(message, id_field.name)
            if value:
                # An id must stay on one line; the SSE grammar ends it at CR or LF.
                line = str(value).replace("\r", " ").replace("\n", " ")
                return b"id: " + line.encode() + b"\ndata: " + data + b"\n\n"
        return b"data: " + data + b"\n\n"

    def _error(self, envelope: dict[str, Any]) -> bytes:
        data = self._encoder.encode(envelope)
        if self._ndjson:
            return data + b"\n"
        return b"event: error\ndata: " + data + b"\n\n"


async def _disconnected(receive: Receive) -> None:
    """Returns when the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
