"""An in-process gRPC server for the showcase: it records and echoes what the gateway sends.

Implemented with generic handlers (no generated stubs): each RPC records its request, and the
echoing ones answer with the request plus ``server_note`` = the RPC's name, so a test sees which
RPC a route reached and exactly what it received.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import any_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.protos.showcase import SERVICE

_ECHO_KITCHEN = (
    "CreateKitchen",
    "GetKitchen",
    "GetSpecialKitchen",
    "GetNested",
    "GetRoom",
    "TouchFile",
    "PolishKitchen",
    "PurgeKitchens",
    "AddNested",
    "GetKitchenTags",
    "Hidden",
)
CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class ShowcaseServicer:
    """The showcase's behaviour plus what it received."""

    pb: ModuleType
    received: list[tuple[str, Any]] = field(default_factory=list)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def last(self) -> tuple[str, Any]:
        """The last (RPC name, request) received."""
        assert self.received, "the servicer received nothing"
        return self.received[-1]

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler serving every showcase RPC."""
        pb = self.pb
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name in _ECHO_KITCHEN:
            handlers[name] = self._unary(name, pb.Kitchen, pb.Kitchen, self._echo_kitchen(name))
        handlers["UpdateKitchen"] = self._unary(
            "UpdateKitchen", pb.UpdateKitchenRequest, pb.Kitchen, _updated_kitchen
        )
        handlers["UpdateFlat"] = self._unary(
            "UpdateFlat", pb.UpdateFlatRequest, empty_pb2.Empty, _empty
        )
        handlers["DeleteKitchen"] = self._unary(
            "DeleteKitchen", pb.Kitchen, empty_pb2.Empty, _empty
        )
        handlers["Fail"] = self._unary("Fail", pb.FailRequest, empty_pb2.Empty, _fail)
        handlers["Inspect"] = self._unary(
            "Inspect", pb.InspectRequest, pb.InspectResponse, self._inspect
        )
        handlers["StreamKitchens"] = grpc.unary_stream_rpc_method_handler(
            self._stream,
            request_deserializer=pb.StreamKitchensRequest.FromString,
            response_serializer=pb.Kitchen.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _unary(
        self,
        name: str,
        request_type: Any,
        response_type: Any,
        behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    ) -> grpc.RpcMethodHandler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.received.append((name, request))
            return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )

    def _echo_kitchen(self, name: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def echo(request: Any, context: grpc.aio.ServicerContext) -> Any:
            reply = self.pb.Kitchen()
            reply.CopyFrom(request)
            reply.server_note = name
            return reply

        return echo

    async def _inspect(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        reply = self.pb.InspectResponse()
        for entry in context.invocation_metadata() or ():
            key, value = entry
            if isinstance(value, bytes):
                reply.binary_metadata[key] = value
            elif key in reply.metadata:
                reply.metadata[key] += "," + value
            else:
                reply.metadata[key] = value
        remaining = context.time_remaining()
        if remaining is not None:
            reply.time_remaining.value = remaining
        if request.echo_initial:
            await context.send_initial_metadata(_pairs(request.echo_initial))
        if request.echo_trailing:
            context.set_trailing_metadata(_pairs(request.echo_trailing))
        return reply

    async def _stream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.received.append(("StreamKitchens", request))
        for index in range(request.count):
            yield self.pb.Kitchen(id=f"k{index}", f_int32=index)
        if request.fail_code:
            await context.abort(CODES_BY_NUMBER[request.fail_code], "the stream failed")
        if request.hang:
            try:
                await asyncio.Event().wait()  # until the call is cancelled
            except asyncio.CancelledError:
                self.stream_cancelled.set()
                raise


def _pairs(items: Any) -> tuple[tuple[str, str], ...]:
    return tuple((key, value) for key, _, value in (item.partition("=") for item in items) if key)


async def _updated_kitchen(request: Any, context: grpc.aio.ServicerContext) -> Any:
    return request.kitchen


async def _empty(request: Any, context: grpc.aio.ServicerContext) -> Any:
    return empty_pb2.Empty()


async def _fail(request: Any, context: grpc.aio.ServicerContext) -> Any:
    code = CODES_BY_NUMBER[request.code]
    if code == grpc.StatusCode.OK:
        return empty_pb2.Empty()
    status = status_pb2.Status(code=request.code, message=request.message)
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason="SHOWCASE_FAILURE", domain="testing.contextiq.dev", metadata={"code": code.name}
        )
    )
    status.details.append(info)
    if request.HasField("retry_delay"):
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=request.retry_delay))
        status.details.append(retry)
    await context.abort(
        code,
        request.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )
    return None  # not reached: abort raises


@dataclass
class ShowcaseBackend:
    """A running showcase gRPC server."""

    server: grpc.aio.Server
    address: str
    servicer: ShowcaseServicer
    health: Any


async def start_backend(pb: ModuleType, *, components: tuple[str, ...] = ()) -> ShowcaseBackend:
    """Starts the showcase and a health servicer (reporting SERVING for it and ``components``)."""
    servicer = ShowcaseServicer(pb=pb)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((servicer.handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (SERVICE, *components):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return ShowcaseBackend(
        server=server, address=f"127.0.0.1:{port}", servicer=servicer, health=health_servicer
    )


def b64(data: bytes) -> str:
    """Standard base64 text of bytes."""
    return base64.b64encode(data).decode("ascii")
