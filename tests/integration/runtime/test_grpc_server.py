"""GrpcServer and the interceptors against a real server on 127.0.0.1, port 0.

Every test runs on both engines (``native``: pygrpc-native; ``grpcio``: grpc.aio). The test
services take bytes in and out, so no protos are needed: the request names what the handler
should do. EchoService is registered the way generated code registers a service (the native
engine serves its unary and server-streaming methods itself); OtherService only through a
generic handler, which the native engine hands to its grpc.aio fallback server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from ciq_runtime.errors import ERROR_DOMAIN, InvalidArgument, NotFound
from ciq_runtime.server import (
    Component,
    GrpcServer,
    PortInUseError,
    ServiceSpec,
    default_interceptors,
)
from ciq_runtime.settings import GrpcEngine
from tests.helpers import async_wait_for

SERVICE = "contextiq.test.v1.EchoService"
OTHER_SERVICE = "contextiq.test.v1.OtherService"
SECRET_TEXT = "password=hunter2 in SELECT * FROM secrets"


def fail_as(request: bytes) -> None:
    if request == b"notfound":
        raise NotFound("session s1 not found", reason="SESSION_NOT_FOUND", metadata={"id": "s1"})
    if request == b"invalid":
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if request == b"boom":
        raise ValueError(SECRET_TEXT)


#: What the Slow handler saw: "started", then "cancelled" when the call was abandoned.
SLOW_EVENTS: list[str] = []


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    fail_as(request)
    return b"echo:" + request


async def metadata_echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    seen = dict(context.invocation_metadata() or ())
    context.set_trailing_metadata((("x-seen", str(seen.get("x-token", ""))),))
    return str(seen.get("x-token", "")).encode()


async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    SLOW_EVENTS.append("started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        SLOW_EVENTS.append("cancelled")
        raise
    return b"late"


async def server_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    yield b"second"
    fail_as(request)
    yield b"last"


async def server_stream_by_write(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"first")
    fail_as(request)
    await context.write(b"last")


async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    seen = [r async for r in requests]
    for request in seen:
        fail_as(request)
    return b",".join(seen)


async def bidi_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        fail_as(request)
        yield b"echo:" + request


def register_echo(server: grpc.aio.Server) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Metadata": grpc.unary_unary_rpc_method_handler(metadata_echo),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ServerStreamByWrite": grpc.unary_stream_rpc_method_handler(server_stream_by_write),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
    }
    # As generated code does (grpcio-tools >= 1.64).
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def register_other(server: grpc.aio.Server) -> None:
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(OTHER_SERVICE, handlers),)
    )


class Dependency:
    """A health check whose outcome the test controls."""

    def __init__(self) -> None:
        self.healthy = True

    async def check(self) -> None:
        if not self.healthy:
            raise ConnectionError("down")


def make_server(
    engine: GrpcEngine,
    events: list[str] | None = None,
    dependency: Dependency | None = None,
    **kwargs: Any,
) -> GrpcServer:
    events = events if events is not None else []

    def hook(name: str) -> Callable[[], Any]:
        async def run() -> None:
            events.append(name)

        return run

    dependency = dependency or Dependency()
    return GrpcServer(
        host="127.0.0.1",
        port=kwargs.pop("port", 0),
        components=[
            Component(
                name="echo",
                services=[ServiceSpec(SERVICE, register_echo)],
                on_start=hook("start echo"),
                on_stop=hook("stop echo"),
                health_checks={"fakedb": dependency.check},
            ),
            Component(
                name="other",
                services=[ServiceSpec(OTHER_SERVICE, register_other)],
                on_start=hook("start other"),
                on_stop=hook("stop other"),
            ),
        ],
        interceptors=default_interceptors(),
        engine=engine,
        **kwargs,
    )


@pytest.fixture(params=["native", "grpcio"])
def engine(request: pytest.FixtureRequest) -> GrpcEngine:
    value: GrpcEngine = request.param
    return value


@pytest.fixture
async def server(engine: GrpcEngine) -> AsyncIterator[GrpcServer]:
    srv = make_server(engine, grace_s=0.5)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


async def collect(call: Any, into: list[bytes]) -> None:
    async for response in call:
        into.append(response)


async def rich_status(call: Any) -> status_pb2.Status:
    status = await rpc_status.aio.from_call(call)
    assert status is not None, "no grpc-status-details-bin trailer"
    return status


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in status details")


async def test_success_passes_through(channel: grpc.aio.Channel) -> None:
    assert await channel.unary_unary(f"/{SERVICE}/Unary")(b"hi") == b"echo:hi"


async def test_server_runs_the_engine_asked_for(server: GrpcServer, engine: GrpcEngine) -> None:
    assert server.engine == engine


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown gRPC engine 'tonic'"):
        GrpcServer(host="127.0.0.1", port=0, components=[], engine="tonic")  # type: ignore[arg-type]


async def test_generic_handler_service_is_served(channel: grpc.aio.Channel) -> None:
    assert await channel.unary_unary(f"/{OTHER_SERVICE}/Unary")(b"hi") == b"echo:hi"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{OTHER_SERVICE}/Unary")(b"notfound")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", [SERVICE, OTHER_SERVICE, "contextiq.test.v1.NoSuchService"])
async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel, service: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{service}/NoSuchMethod")(b"hi")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_metadata_reaches_the_handler_and_trailers_the_client(
    channel: grpc.aio.Channel,
) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Metadata")(b"", metadata=(("x-token", "abc"),))
    assert await call == b"abc"
    assert ("x-seen", "abc") in tuple(await call.trailing_metadata())


async def test_deadline_cancels_the_handler(channel: grpc.aio.Channel) -> None:
    SLOW_EVENTS.clear()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/Slow")(b"", timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await async_wait_for(lambda: SLOW_EVENTS == ["started", "cancelled"], timeout=5)


async def test_client_cancel_cancels_the_handler(channel: grpc.aio.Channel) -> None:
    SLOW_EVENTS.clear()
    call = channel.unary_unary(f"/{SERVICE}/Slow")(b"")
    await async_wait_for(lambda: SLOW_EVENTS == ["started"], timeout=5)
    call.cancel()
    await async_wait_for(lambda: SLOW_EVENTS == ["started", "cancelled"], timeout=5)


async def test_oversized_request_is_refused(engine: GrpcEngine) -> None:
    srv = make_server(engine, max_message_bytes=1024)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary(f"/{SERVICE}/Unary")(b"x" * 4096)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await ch.unary_unary(f"/{SERVICE}/Unary")(b"small") == b"echo:small"
    finally:
        await srv.stop()


async def test_domain_error_becomes_status_with_error_info(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")(b"notfound")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "session s1 not found"
    details = error_info(await rich_status(call))
    assert (details.reason, details.domain) == ("SESSION_NOT_FOUND", ERROR_DOMAIN)
    assert dict(details.metadata) == {"id": "s1"}


async def test_invalid_argument_carries_bad_request(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")(b"invalid")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rich_status(call)
    assert error_info(status).metadata["field"] == "page_size"
    assert any(d.Is(error_details_pb2.BadRequest.DESCRIPTOR) for d in status.details)


async def test_unexpected_exception_is_internal_without_its_text(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")(b"boom")
    with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error"
    status = await rich_status(call)
    details = error_info(status)
    assert details.reason == "INTERNAL"
    error_id = details.metadata["error_id"]
    assert "hunter2" not in status.SerializeToString().decode("latin-1")
    assert "hunter2" not in str(await call.trailing_metadata())
    # The operator gets the traceback, findable by the error id the client saw.
    [logged] = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged.levelno == logging.ERROR
    assert logged.exc_info is not None


@pytest.mark.parametrize("method", ["ServerStream", "ServerStreamByWrite"])
async def test_error_mid_stream_ends_stream_with_status(
    channel: grpc.aio.Channel, method: str
) -> None:
    call = channel.unary_stream(f"/{SERVICE}/{method}")(b"notfound")
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call, received)
    assert received[0] == b"first"
    assert b"last" not in received
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(await rich_status(call)).reason == "SESSION_NOT_FOUND"


async def test_crash_mid_stream_is_internal(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"boom")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call, [])
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (info.value.details() or "")


async def test_client_stream_error(channel: grpc.aio.Channel) -> None:
    call = channel.stream_unary(f"/{SERVICE}/ClientStream")(iter([b"a", b"invalid"]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(await rich_status(call)).metadata["field"] == "page_size"


async def test_bidi_stream_error_after_responses(channel: grpc.aio.Channel) -> None:
    call = channel.stream_stream(f"/{SERVICE}/BidiStream")(iter([b"a", b"b", b"notfound"]))
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call, received)
    assert received == [b"echo:a", b"echo:b"]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_logging_interceptor_logs_final_code_and_duration(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ciq_runtime.rpc"):
        await channel.unary_unary(f"/{SERVICE}/Unary")(b"ok")
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{SERVICE}/Unary")(b"notfound")
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{SERVICE}/Unary")(b"boom")
        # The server logs after the reply is on the wire: wait for the third line.
        await async_wait_for(
            lambda: sum(r.name == "ciq_runtime.rpc" for r in caplog.records) >= 3, timeout=5
        )
    rpc_lines = [r for r in caplog.records if r.name == "ciq_runtime.rpc"]
    assert [(r.__dict__["rpc_method"], r.__dict__["grpc_code"]) for r in rpc_lines] == [
        (f"/{SERVICE}/Unary", "OK"),
        (f"/{SERVICE}/Unary", "NOT_FOUND"),
        (f"/{SERVICE}/Unary", "INTERNAL"),
    ]
    assert all(r.levelno == logging.INFO for r in rpc_lines)
    assert all(isinstance(r.__dict__["duration_ms"], float) for r in rpc_lines)


async def test_health_reports_every_service_and_dependency(
    server: GrpcServer, channel: grpc.aio.Channel
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE, OTHER_SERVICE, "fakedb"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name
    assert server.health_names == (SERVICE, OTHER_SERVICE, "fakedb")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_set_serving_changes_one_name(server: GrpcServer, channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    await server.set_serving(OTHER_SERVICE, False)
    other = await stub.Check(health_pb2.HealthCheckRequest(service=OTHER_SERVICE))
    echo = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert other.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert echo.status == health_pb2.HealthCheckResponse.SERVING


async def test_failing_dependency_turns_its_name_not_serving(engine: GrpcEngine) -> None:
    dependency = Dependency()
    srv = make_server(engine, dependency=dependency, health_check_interval_s=0.05)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="fakedb"))

            async def next_status() -> int:
                return int((await asyncio.wait_for(watch.read(), timeout=5)).status)

            assert await next_status() == health_pb2.HealthCheckResponse.SERVING
            dependency.healthy = False
            assert await next_status() == health_pb2.HealthCheckResponse.NOT_SERVING
            service = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
            assert service.status == health_pb2.HealthCheckResponse.SERVING
            dependency.healthy = True
            assert await next_status() == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        await srv.stop()


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request])):
        names = {s.name for s in response.list_services_response.service}
        break
    assert names == {
        SERVICE,
        OTHER_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_stop_reports_not_serving_before_stopping_then_runs_hooks_in_reverse(
    engine: GrpcEngine,
) -> None:
    events: list[str] = []
    srv = make_server(engine, events, grace_s=1.0)
    await srv.start()
    assert events == ["start echo", "start other"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(srv.stop())
        second = await asyncio.wait_for(watch.read(), timeout=5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Hooks wait for the server to stop, which waits for in-flight calls (this Watch).
        assert events == ["start echo", "start other"]
        watch.cancel()
        await stopping
    assert events == ["start echo", "start other", "stop other", "stop echo"]
    await srv.stop()  # idempotent: no second round of hooks
    assert events.count("stop echo") == 1


async def test_concurrent_stops_share_one_shutdown(engine: GrpcEngine) -> None:
    events: list[str] = []
    srv = make_server(engine, events, grace_s=0.1)
    await srv.start()
    await asyncio.gather(srv.stop(), srv.stop(), srv.stop())
    assert events.count("stop echo") == 1


async def test_port_in_use_message_is_one_line(engine: GrpcEngine) -> None:
    events: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            await make_server(engine, events, port=port).start()
    assert str(info.value) == (
        f"127.0.0.1:{port} is already in use: stop the other process or set CONTEXTIQ_GRPC_PORT"
    )
    # The port is checked before the hooks: no migrations run for a server that can't listen.
    assert events == []


@pytest.mark.parametrize("second", ["native", "grpcio"])
async def test_second_grpc_server_on_same_port_is_refused(
    server: GrpcServer, second: GrpcEngine
) -> None:
    # grpc enables SO_REUSEPORT by default, which would let this bind succeed silently.
    with pytest.raises(PortInUseError):
        await make_server(second, port=server.port).start()


async def test_failing_start_hook_undoes_earlier_components(engine: GrpcEngine) -> None:
    events: list[str] = []

    async def started() -> None:
        events.append("start a")

    async def stopped() -> None:
        events.append("stop a")

    async def broken() -> None:
        raise RuntimeError("migration failed")

    srv = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=[
            Component(name="a", services=[], on_start=started, on_stop=stopped),
            Component(name="b", services=[], on_start=broken, on_stop=stopped),
        ],
        engine=engine,
    )
    with pytest.raises(RuntimeError, match="migration failed"):
        await srv.start()
    assert events == ["start a", "stop a"]
    with pytest.raises(RuntimeError):
        _ = srv.port
    await srv.stop()
    assert events == ["start a", "stop a"]


def test_duplicate_service_names_are_refused() -> None:
    spec = ServiceSpec(SERVICE, register_echo)
    with pytest.raises(ValueError, match="registered twice"):
        GrpcServer(
            host="127.0.0.1",
            port=0,
            components=[Component("a", [spec]), Component("b", [spec])],
        )
