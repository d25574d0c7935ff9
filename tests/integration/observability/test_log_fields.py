"""A request's log lines carry level, service, trace and span ids, tenant and principal."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ciq_runtime import telemetry
from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.logging import configure_logging
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from contextiq.sessions.v1 import session_service_pb2, session_service_pb2_grpc
from sessions_svc.component import build_component as build_sessions
from tests.auth_helpers import TEST_JWT_SECRET, bearer


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = telemetry.install_test_exporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    configure_logging(service="sessions", level="INFO", stream=stream)
    try:
        yield stream
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


async def test_rpc_log_line_has_trace_span_and_tenant(
    pg_url: str, spans: InMemorySpanExporter, log_stream: io.StringIO
) -> None:
    settings = Settings.from_env({}, service_name="sessions").replace(
        database_url=pg_url, jwt_secret=TEST_JWT_SECRET
    )
    component = build_sessions(settings)
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=[component],
        interceptors=default_interceptors(
            build_auth_interceptor(settings, services=service_names([component]))
        ),
    )
    port = await server.start()
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = session_service_pb2_grpc.SessionServiceStub(channel)
            created = await stub.CreateSession(
                session_service_pb2.CreateSessionRequest(user_id="u1"), metadata=bearer(tenant)
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetSession(
                    session_service_pb2.GetSessionRequest(id=str(uuid.uuid4())),
                    metadata=bearer(tenant),
                )
    finally:
        await server.stop()
    assert created.id

    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    rpc_lines = {
        line["rpc_method"].rsplit("/", 1)[-1]: line
        for line in lines
        if line["logger"] == "ciq_runtime.rpc"
    }
    server_spans = {
        s.name.rsplit("/", 1)[-1]: s
        for s in spans.get_finished_spans()
        if s.name.startswith("contextiq.sessions.v1.SessionService/")
    }
    for method, code, level in (
        ("CreateSession", "OK", "INFO"),
        ("GetSession", "NOT_FOUND", "INFO"),
    ):
        line = rpc_lines[method]
        span = server_spans[method]
        assert line["level"] == level
        assert line["service"] == "sessions"
        assert line["grpc_code"] == code
        assert line["tenant_id"] == tenant
        assert line["principal"] == "test-user"
        # The ids of the RPC's SERVER span: the line can be found from the trace and back.
        assert line["trace_id"] == f"{span.context.trace_id:032x}"
        assert line["span_id"] == f"{span.context.span_id:016x}"
