"""Fixtures of the SessionService tests: real servers (port 0) on the session's Postgres.

The main server runs the component as a deployment would: JWT auth, error and logging
interceptors, its own migrations. It runs on each gRPC engine in turn (``native``, the default,
then ``grpcio``), so every test of the main server checks both. Its TTL sweeper is slowed down
so that tests observe expired sessions before they are purged; the sweeper tests start their
own server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.server import Component, GrpcServer, default_interceptors
from ciq_runtime.settings import GrpcEngine, Settings
from contextiq.sessions.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc
from sessions_svc.component import SERVICE_NAME, SessionsBackend, build_component
from tests.auth_helpers import TEST_JWT_SECRET, bearer

if TYPE_CHECKING:
    # The async stub type exists only in the generated .pyi.
    from contextiq.sessions.v1.session_service_pb2_grpc import SessionServiceAsyncStub

    Stub = SessionServiceAsyncStub
else:
    Stub = Any

Metadata = tuple[tuple[str, str], ...]


def server_settings(pg_url: str) -> Settings:
    """Settings of a test server: the session's database, the test JWT secret, no limits."""
    return Settings.from_env({}, service_name="sessions").replace(
        database_url=pg_url,
        jwt_secret=TEST_JWT_SECRET,
        rate_limit_per_minute=0,
        tenant_rate_limit_per_minute=0,
    )


@dataclass
class SessionsServer:
    """A running server, a client stub and its backend (for white-box checks)."""

    server: GrpcServer
    channel: grpc.aio.Channel
    stub: Stub
    backend: SessionsBackend
    address: str


async def start_server(
    pg_url: str, *, engine: GrpcEngine = "native", **options: Any
) -> SessionsServer:
    """Start a SessionService server with ``build_component(settings, **options)``."""
    settings = server_settings(pg_url)
    component: Component = build_component(settings, **options)
    assert component.on_start is not None
    backend = cast(SessionsBackend, component.on_start.__self__)  # type: ignore[attr-defined]
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=[component],
        interceptors=default_interceptors(
            build_auth_interceptor(settings, services=[SERVICE_NAME])
        ),
        grace_s=1.0,
        engine=engine,
    )
    port = await server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    stub = session_service_pb2_grpc.SessionServiceStub(channel)
    return SessionsServer(
        server=server,
        channel=channel,
        stub=cast("Stub", stub),
        backend=backend,
        address=address,
    )


async def stop_server(running: SessionsServer) -> None:
    """Close the client channel and stop the server."""
    await running.channel.close()
    await running.server.stop()


@pytest.fixture(scope="session", params=["native", "grpcio"])
async def sessions(pg_url: str, request: pytest.FixtureRequest) -> AsyncIterator[SessionsServer]:
    """The main server (sweeper every hour: expired sessions stay in the tables)."""
    running = await start_server(
        pg_url, engine=request.param, sweep_interval_s=3600.0, stream_poll_interval_s=0.5
    )
    try:
        yield running
    finally:
        await stop_server(running)


@pytest.fixture
def stub(sessions: SessionsServer) -> Stub:
    """Client stub of the main server."""
    return sessions.stub


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tests never see each other's sessions or shared state."""
    return f"tenant-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def md(tenant: str) -> Metadata:
    """gRPC metadata authenticating as an admin of ``tenant``."""
    return bearer(tenant)


@pytest.fixture(scope="session")
async def pg(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct database connection for white-box assertions."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    """A Struct holding ``values``."""
    out = struct_pb2.Struct()
    out.update(values)
    return out


def as_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values (numbers as floats, as Struct holds them)."""
    from google.protobuf import json_format

    result: dict[str, Any] = json_format.MessageToDict(value)
    return result


def text_event(text: str, *, author: str = "user", **fields: Any) -> session_pb2.Event:
    """An event with one text part."""
    return session_pb2.Event(
        author=author,
        content=session_pb2.Content(role=author, parts=[session_pb2.Part(text=text)]),
        **fields,
    )


def delta_event(
    delta: dict[str, Any], *, author: str = "agent", **fields: Any
) -> session_pb2.Event:
    """An event carrying a state delta."""
    return session_pb2.Event(
        author=author, actions=session_pb2.EventActions(state_delta=struct(delta)), **fields
    )


async def create(stub: Stub, md: Metadata, **fields: Any) -> session_pb2.Session:
    """CreateSession with ``user_id="u1"`` unless given."""
    fields.setdefault("user_id", "u1")
    request = session_service_pb2.CreateSessionRequest(**fields)
    session: session_pb2.Session = await stub.CreateSession(request, metadata=md)
    return session


async def append(
    stub: Stub,
    md: Metadata,
    session_id: str,
    event: session_pb2.Event,
    **fields: Any,
) -> session_pb2.Event:
    """AppendEvent."""
    request = session_service_pb2.AppendEventRequest(session_id=session_id, event=event, **fields)
    stored: session_pb2.Event = await stub.AppendEvent(request, metadata=md)
    return stored


async def get(
    stub: Stub,
    md: Metadata,
    session_id: str,
    **fields: Any,
) -> session_pb2.Session:
    """GetSession."""
    request = session_service_pb2.GetSessionRequest(id=session_id, **fields)
    session: session_pb2.Session = await stub.GetSession(request, metadata=md)
    return session


@dataclass(frozen=True)
class RpcFailure:
    """What a failed call reported."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    field: str | None


async def failure(call: Awaitable[Any] | Callable[[], Awaitable[Any]]) -> RpcFailure:
    """Await ``call`` expecting an RPC error; return its code and rich details."""
    awaitable = call() if callable(call) else call
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return rpc_failure(info.value)


def rpc_failure(error: grpc.aio.AioRpcError) -> RpcFailure:
    """Decode the google.rpc.Status details of an RPC error."""
    reason, metadata, field = "", {}, None
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                field = bad.field_violations[0].field
    return RpcFailure(
        code=error.code(),
        message=error.details() or "",
        reason=reason,
        metadata=metadata,
        field=field,
    )
