"""``make run`` as a new user meets it: one launcher, real Postgres and NATS, every service.

Each test drives ``python -m ciq_runtime.stack`` as a child process, through grpcurl, the
gRPC health service and plain HTTP, the way the README tells users to.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.stack_process import BOOTSTRAP_KEY, REPO, StackPorts, StackProcess, processes_using
from tests.helpers import wait_for

GRPCURL = REPO / ".venv" / "bin" / "grpcurl"

PUBLIC_SERVICES = {
    "contextiq.sessions.v1.SessionService",
    "contextiq.memory.v1.MemoryService",
    "contextiq.memory.v1.MemoryBankService",
    "contextiq.memory.v1.MemoryJobService",
    "contextiq.procedural.v1.ProceduralService",
    "contextiq.extraction.v1.ExtractionService",
    "google.longrunning.Operations",
}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data_dir(service_tmp_path: Path) -> Path:
    path = service_tmp_path / "stack-data"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def ports() -> StackPorts:
    return StackPorts()


@pytest.fixture(scope="module")
def stack(data_dir: Path, ports: StackPorts) -> Iterator[StackProcess]:
    proc = StackProcess(data_dir, ports)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_banner_says_where_everything_listens(stack: StackProcess) -> None:
    banner = "\n".join(stack.stdout)
    assert f"127.0.0.1:{stack.ports.grpc}" in banner
    assert f"http://127.0.0.1:{stack.ports.http}" in banner
    assert f"127.0.0.1:{stack.ports.pg}" in banner
    assert f"nats://127.0.0.1:{stack.ports.nats}" in banner
    assert str(stack.data_dir) in banner


def test_grpcurl_lists_every_service(stack: StackProcess) -> None:
    result = _grpcurl(stack.grpc_target, "list")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert listed >= PUBLIC_SERVICES
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1alpha.ServerReflection" in listed


def test_grpcurl_describes_a_method_through_reflection(stack: StackProcess) -> None:
    result = _grpcurl(stack.grpc_target, "describe", "contextiq.sessions.v1.Session")
    assert result.returncode == 0, result.stderr
    for field in ("user_id", "agent_id", "scope", "state", "expires_at", "events"):
        assert field in result.stdout


@pytest.mark.parametrize("service", sorted(PUBLIC_SERVICES))
def test_health_check_serving_per_service(stack: StackProcess, service: str) -> None:
    with grpc.insecure_channel(stack.grpc_target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_through_grpcurl(stack: StackProcess) -> None:
    result = _grpcurl(
        "-d",
        '{"service": "contextiq.sessions.v1.SessionService"}',
        stack.grpc_target,
        "grpc.health.v1.Health/Check",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_http_health_reports_every_component(stack: StackProcess) -> None:
    reply = httpx.get(f"{stack.http_base}/health", timeout=10)
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "SERVING"
    assert set(body["components"]) >= PUBLIC_SERVICES
    assert body["components"]["postgres"] == "SERVING"
    assert body["components"]["nats"] == "SERVING"


def test_procedural_memory_through_the_stack(stack: StackProcess) -> None:
    headers = {"X-API-Key": BOOTSTRAP_KEY}
    created = httpx.post(
        f"{stack.http_base}/api/v1/procedural/skills",
        json={
            "name": "Book a flight",
            "skill_type": "tool_usage",
            "description": "Search fares and book the cheapest flight.",
            "implementation": "flights.search(); flights.book(cheapest)",
        },
        headers=headers,
        timeout=10,
    )
    assert created.status_code == 200, created.text
    reply = httpx.post(
        f"{stack.http_base}/api/v1/procedural/search",
        json={"search_query": "book a flight", "top_k": 5},
        headers=headers,
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert results[0]["kind"] == "skill"
    assert results[0]["skill"]["id"] == created.json()["id"]


async def test_postgres_and_nats_are_real_and_reachable(stack: StackProcess) -> None:
    conn = await asyncpg.connect(
        f"postgresql://postgres@127.0.0.1:{stack.ports.pg}/contextiq", timeout=10
    )
    try:
        schemas = {
            r["schema_name"]
            for r in await conn.fetch("SELECT schema_name FROM information_schema.schemata")
        }
        assert {"sessions", "memory", "extraction"} <= schemas
    finally:
        await conn.close()
    nc = await nats.connect(f"nats://127.0.0.1:{stack.ports.nats}", connect_timeout=5)
    try:
        info = await nc.jetstream().stream_info("CONTEXTIQ_JOBS")
        assert info.config.subjects == ["contextiq.jobs.>"]
    finally:
        await nc.close()


def test_rest_needs_credentials_and_accepts_the_bootstrap_key(stack: StackProcess) -> None:
    url = f"{stack.http_base}/api/v1/api-keys"
    missing = httpx.get(url, timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "UNAUTHENTICATED"
    created = httpx.post(
        url,
        json={"display_name": "reader", "permissions": ["SESSION_READ"]},
        headers={"X-API-Key": BOOTSTRAP_KEY},
        timeout=10,
    )
    assert created.status_code == 200, created.text
    reader_key = created.json()["key"]
    assert reader_key.startswith("ck_")
    # The reader may not manage keys: 403, checked before anything else.
    denied = httpx.get(url, headers={"X-API-Key": reader_key}, timeout=10)
    assert denied.status_code == 403


async def test_ctrl_c_leaves_nothing_and_restart_finds_the_data(
    stack: StackProcess, data_dir: Path, ports: StackPorts
) -> None:
    # Leave a mark in both stores, stop with Ctrl-C, start again: the marks must be there.
    dsn = f"postgresql://postgres@127.0.0.1:{ports.pg}/contextiq"
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("CREATE TABLE public.e2e_marker (note text)")
        await conn.execute("INSERT INTO public.e2e_marker VALUES ('first run')")
    finally:
        await conn.close()
    nc = await nats.connect(f"nats://127.0.0.1:{ports.nats}", connect_timeout=5)
    try:
        await nc.jetstream().publish("contextiq.jobs.e2e.marker", b"first run")
    finally:
        await nc.close()
    assert processes_using(data_dir), "Postgres and NATS should run from the data directory"

    assert stack.stop(signal.SIGINT) == 0, stack.output()
    assert wait_for(lambda: not processes_using(data_dir), timeout=10), (
        f"a process outlived Ctrl-C: {processes_using(data_dir)}"
    )

    again = StackProcess(data_dir, ports)
    again.start()
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT note FROM public.e2e_marker") == "first run"
        finally:
            await conn.close()
        nc = await nats.connect(f"nats://127.0.0.1:{ports.nats}", connect_timeout=5)
        try:
            info = await nc.jetstream().stream_info("CONTEXTIQ_JOBS")
            assert info.state.messages == 1
        finally:
            await nc.close()
    finally:
        assert again.stop(signal.SIGTERM) == 0, again.output()


def test_first_run_without_bootstrap_key_prints_a_working_admin_key(
    service_tmp_path: Path,
) -> None:
    data_dir = service_tmp_path / "first-run"
    data_dir.mkdir()
    ports = StackPorts()
    first = StackProcess(data_dir, ports, CONTEXTIQ_BOOTSTRAP_API_KEY="")
    first.start()
    try:
        printed = [w for line in first.stdout for w in line.split() if w.startswith("ck_")]
        assert len(printed) == 1, first.output()
        reply = httpx.get(
            f"{first.http_base}/api/v1/api-keys", headers={"X-API-Key": printed[0]}, timeout=10
        )
        assert reply.status_code == 200
    finally:
        assert first.stop() == 0
    second = StackProcess(data_dir, ports, CONTEXTIQ_BOOTSTRAP_API_KEY="")
    second.start()
    try:
        assert not [w for line in second.stdout for w in line.split() if w.startswith("ck_")]
    finally:
        assert second.stop() == 0


def test_port_in_use_is_a_one_line_error(service_tmp_path: Path) -> None:
    ports = StackPorts()
    with socket.create_server(("127.0.0.1", ports.grpc)):
        proc = StackProcess(service_tmp_path / "port-taken", ports)
        code = proc.run_to_exit()
    assert code == 1
    assert proc.stderr == [
        f"contextiq: error: port {ports.grpc} on 127.0.0.1 is in use: "
        "stop the other process or set CONTEXTIQ_GRPC_PORT to a free port"
    ]
    assert processes_using(service_tmp_path / "port-taken") == []


def test_dead_data_directory_is_a_one_line_error(service_tmp_path: Path) -> None:
    data_dir = service_tmp_path / "dead"
    (data_dir / "pg").mkdir(parents=True)
    (data_dir / "pg" / "PG_VERSION").write_text("not a cluster\n")
    proc = StackProcess(data_dir, StackPorts())
    code = proc.run_to_exit()
    assert code == 1
    errors = [line for line in proc.stderr if line.startswith("contextiq: error:")]
    assert len(errors) == 1, proc.output()
    assert "is not a usable PostgreSQL data directory" in errors[0]
    assert "CONTEXTIQ_DATA_DIR" in errors[0]
    assert "Traceback" not in proc.output()


def test_data_dir_that_is_a_file_is_a_one_line_error(service_tmp_path: Path) -> None:
    path = service_tmp_path / "a-file"
    path.write_text("")
    proc = StackProcess(path, StackPorts())
    assert proc.run_to_exit() == 1
    assert proc.stderr == [
        f"contextiq: error: {path} is not a directory: "
        "move it away or set CONTEXTIQ_DATA_DIR to a folder"
    ]
