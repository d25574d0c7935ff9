"""A real process's /metrics: RPCs by method and code, latency, queue backlog, LLM calls and
tokens, per-tenant counts with a bounded label set."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from nats.js import JetStreamContext

from ciq_runtime import metrics
from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.errors import FailedPrecondition
from ciq_runtime.metrics import ProcessMetrics, TenantCountRefresher
from ciq_runtime.nats import connect_nats, ensure_pull_consumer, ensure_stream, publish_proto
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from contextiq.sessions.v1 import session_service_pb2, session_service_pb2_grpc
from extraction_svc.llm import LlmClient
from gateway.app import create_app
from gateway.server import serve
from memory_svc.component import build_memory
from sessions_svc.component import build_component as build_sessions
from tests.auth_helpers import TEST_JWT_SECRET, bearer, bearer_headers
from tests.integration.observability.conftest import Samples, parse_samples, value
from tests.llm_server import MODEL, Reply, ScriptedLLM

SESSIONS = "contextiq.sessions.v1.SessionService"
MEMORY = "contextiq.memory.v1.MemoryService"


@dataclass
class Process:
    """Sessions and memory on one gRPC server, with the process's metrics endpoint."""

    address: str
    metrics: ProcessMetrics
    settings: Settings

    async def scrape(self) -> Samples:
        assert self.metrics.server is not None
        url = f"http://127.0.0.1:{self.metrics.server.port}/metrics"
        async with httpx.AsyncClient() as client:
            reply = await client.get(url, timeout=10)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        return parse_samples(reply.text)


@pytest.fixture
async def process(own_db: str, nats_url: str) -> AsyncIterator[Process]:
    settings = Settings.from_env({}, service_name="metrics-test").replace(
        database_url=own_db, nats_url=nats_url, jwt_secret=TEST_JWT_SECRET, grpc_host="127.0.0.1"
    )
    memory = build_memory(
        settings,
        index_path=Path(tempfile.mkdtemp(prefix="ciq-obs-index-")),
        sweep_interval_s=3600.0,
        repair_interval_s=3600.0,
    )
    components = [build_sessions(settings), memory.component]
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=components,
        interceptors=default_interceptors(
            build_auth_interceptor(settings, services=service_names(components))
        ),
    )
    port = await server.start()
    process_metrics = await ProcessMetrics.start(
        settings,
        tenant_counts=[q for c in components for q in c.tenant_counts],
        port=0,
        refresh_interval_s=3600.0,
    )
    try:
        yield Process(f"127.0.0.1:{port}", process_metrics, settings)
    finally:
        await process_metrics.stop()
        await server.stop()


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def test_rpcs_are_counted_by_method_and_code_with_latency(process: Process) -> None:
    before = await process.scrape()
    tenant = _tenant()
    async with grpc.aio.insecure_channel(process.address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        for _ in range(3):
            await sessions.CreateSession(
                session_service_pb2.CreateSessionRequest(user_id="u1"), metadata=bearer(tenant)
            )
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await sessions.GetSession(
                session_service_pb2.GetSessionRequest(id=str(uuid.uuid4())),
                metadata=bearer(tenant),
            )
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await sessions.CreateSession(session_service_pb2.CreateSessionRequest(user_id="u1"))
        assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED
    after = await process.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "contextiq_grpc_server_requests_total"
    assert delta(requests, grpc_service=SESSIONS, grpc_method="CreateSession", grpc_code="OK") == 3
    assert (
        delta(requests, grpc_service=SESSIONS, grpc_method="GetSession", grpc_code="NOT_FOUND") == 1
    )
    assert (
        delta(
            requests,
            grpc_service=SESSIONS,
            grpc_method="CreateSession",
            grpc_code="UNAUTHENTICATED",
        )
        == 1
    )
    duration = "contextiq_grpc_server_request_duration_seconds"
    labels = {"grpc_service": SESSIONS, "grpc_method": "CreateSession"}
    assert delta(f"{duration}_count", **labels) == 4
    assert delta(f"{duration}_bucket", **labels, le="+Inf") == 4
    assert delta(f"{duration}_sum", **labels) > 0
    # The process collectors are there too (one scrape target per process).
    assert value(after, "process_cpu_seconds_total") > 0


async def test_sessions_and_memories_are_counted_per_tenant(process: Process) -> None:
    big, small = _tenant(), _tenant()
    async with grpc.aio.insecure_channel(process.address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        memories = memory_service_pb2_grpc.MemoryServiceStub(channel)
        for tenant, count in ((big, 3), (small, 1)):
            for _ in range(count):
                await sessions.CreateSession(
                    session_service_pb2.CreateSessionRequest(user_id="u1"),
                    metadata=bearer(tenant),
                )
        for fact in ("likes tea", "lives in Lyon"):
            await memories.CreateMemory(
                memory_service_pb2.CreateMemoryRequest(scope={"user_id": "u1"}, fact=fact),
                metadata=bearer(big),
            )
    await process.metrics.refresh()
    samples = await process.scrape()
    gauge = "contextiq_tenant_resources"
    assert value(samples, gauge, resource="sessions", tenant=big) == 3
    assert value(samples, gauge, resource="sessions", tenant=small) == 1
    assert value(samples, gauge, resource="memories", tenant=big) == 2
    assert (gauge, frozenset({("resource", "memories"), ("tenant", small)})) not in samples


async def test_tenants_past_the_top_n_are_summed_as_other(process: Process) -> None:
    tenants = [_tenant() for _ in range(4)]
    async with grpc.aio.insecure_channel(process.address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        for rank, tenant in enumerate(tenants):
            for _ in range(4 - rank):  # 4, 3, 2, 1 sessions
                await sessions.CreateSession(
                    session_service_pb2.CreateSessionRequest(user_id="u1"),
                    metadata=bearer(tenant),
                )
    from ciq_runtime.db import create_engine

    engine = create_engine(process.settings, pool_size=1, max_overflow=0)
    try:
        sessions_counts = build_sessions(process.settings).tenant_counts
        refresher = TenantCountRefresher(engine, sessions_counts, top=2)
        await refresher.refresh_once()
    finally:
        await engine.dispose()
    samples = await process.scrape()
    reported = {
        dict(labels)["tenant"]: v
        for (name, labels), v in samples.items()
        if name == "contextiq_tenant_resources" and ("resource", "sessions") in labels
    }
    assert reported == {tenants[0]: 4, tenants[1]: 3, metrics.OTHER: 3}


async def test_queue_backlog_is_read_from_the_consumer(process: Process) -> None:
    stream = f"OBS_{uuid.uuid4().hex[:8].upper()}"
    subject = f"obs.{stream.lower()}.jobs"
    nc = await connect_nats(process.settings.nats_url or "", name="metrics-test")
    try:
        js: JetStreamContext = nc.jetstream()
        await ensure_stream(js, name=stream, subjects=[subject], retention="workqueue")
        await ensure_pull_consumer(
            js, stream=stream, durable="worker", filter_subject=subject, ack_wait_s=30,
            max_deliver=3,
        )  # fmt: skip
        from google.protobuf import duration_pb2

        for n in range(3):
            await publish_proto(js, subject, duration_pb2.Duration(seconds=n), msg_id=f"m{n}")
        sub = await js.pull_subscribe(subject, durable="worker", stream=stream)
        (delivered,) = await sub.fetch(1, timeout=5)
        await metrics.observe_consumer(js, stream=stream, consumer="worker")
        samples = await process.scrape()
        labels = {"stream": stream, "consumer": "worker"}
        assert value(samples, "contextiq_queue_pending_messages", **labels) == 2
        assert value(samples, "contextiq_queue_ack_pending_messages", **labels) == 1
        await delivered.ack()
        await js.delete_stream(stream)
    finally:
        await nc.drain()


async def test_llm_calls_tokens_and_errors(process: Process) -> None:
    llm = await ScriptedLLM().start()
    try:
        client = LlmClient(api_base=llm.api_base, api_key="test-key", timeout_s=5.0)
        before = await process.scrape()
        llm.push(Reply.json({"ok": True}, prompt_tokens=120, completion_tokens=7))
        await client.complete_json(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            schema_name="metrics_probe",
            schema={"type": "object"},
            validate=_identity,
        )
        llm.push(Reply(status=401, content="bad key"))
        with pytest.raises(FailedPrecondition):
            await client.complete_json(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                schema_name="metrics_probe",
                schema={"type": "object"},
                validate=_identity,
            )
        after = await process.scrape()
    finally:
        await llm.stop()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    common = {"model": MODEL, "operation": "metrics_probe"}
    assert delta("contextiq_llm_tokens_total", **common, kind="prompt") == 120
    assert delta("contextiq_llm_tokens_total", **common, kind="completion") == 7
    assert delta("contextiq_llm_requests_total", **common, outcome="ok") == 1
    errors = {
        dict(labels)["error"]: v - value(before, name, **dict(labels))
        for (name, labels), v in after.items()
        if name == "contextiq_llm_errors_total" and ("operation", "metrics_probe") in labels
    }
    assert errors == {"AuthenticationError": 1}
    assert delta("contextiq_llm_request_duration_seconds_count", **common) == 2


def _identity(payload: Any) -> Any:
    return payload


async def test_one_process_stack_serves_everything_on_the_gateways_metrics(
    process: Process,
) -> None:
    # `make run`: the gateway's /metrics also serves the process registry.
    app = create_app(
        routes_from=[SESSIONS],
        upstreams={SESSIONS: process.address},
        extra_metrics=[metrics.REGISTRY],
    )
    gateway = await serve(app, host="127.0.0.1", port=0)
    tenant = _tenant()
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            created = await client.post(
                "/api/v1/sessions", json={"user_id": "u1"}, headers=bearer_headers(tenant)
            )
            assert created.status_code == 200
            page = await client.get("/metrics")
    finally:
        await gateway.stop()
    assert page.status_code == 200
    samples = parse_samples(page.text)
    assert (
        value(
            samples,
            "contextiq_gateway_requests_total",
            route="/api/v1/sessions",
            method="POST",
            status="200",
        )
        == 1
    )
    assert (
        value(
            samples,
            "contextiq_grpc_server_requests_total",
            grpc_service=SESSIONS,
            grpc_method="CreateSession",
            grpc_code="OK",
        )
        >= 1
    )
