"""The extraction service on a real gRPC server, its LLM played by the scripted server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.embedded import EmbeddedNats
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from extraction_svc.component import build_component
from tests.auth_helpers import TEST_JWT_SECRET
from tests.integration.extraction.pipeline import fresh_database
from tests.llm_server import MODEL, ScriptedLLM


@pytest.fixture(scope="module")
async def llm() -> AsyncIterator[ScriptedLLM]:
    server = await ScriptedLLM().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(autouse=True)
def _fresh_script(llm: ScriptedLLM) -> None:
    llm.replies.clear()
    llm.requests.clear()


async def _serve(settings: Settings) -> GrpcServer:
    component = build_component(settings)
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=[component],
        interceptors=default_interceptors(
            build_auth_interceptor(settings, services=service_names([component]))
        ),
    )
    await server.start()
    return server


def _settings(pg_url: str, nats_url: str, **changes: object) -> Settings:
    return (
        Settings.from_env({}, service_name="extraction")
        .replace(
            database_url=pg_url,
            nats_url=nats_url,
            jwt_secret=TEST_JWT_SECRET,
            worker_enabled=False,
        )
        .replace(**changes)
    )


@pytest.fixture(scope="module")
async def channel(pg_url: str, nats_url: str, llm: ScriptedLLM) -> AsyncIterator[grpc.aio.Channel]:
    server = await _serve(
        _settings(
            pg_url,
            nats_url,
            llm_model=MODEL,
            llm_api_base=llm.api_base,
            llm_api_key="test-key",
            llm_timeout_s=1.0,
            llm_max_attempts=3,
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            yield ch
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def no_model_channel(pg_url: str, nats_url: str) -> AsyncIterator[grpc.aio.Channel]:
    server = await _serve(_settings(pg_url, nats_url, llm_model=None))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            yield ch
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def worker_nats(service_tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A NATS of the module's own: its job stream holds only this module's jobs."""
    server = EmbeddedNats(store_dir=service_tmp_path / f"nats-{uuid.uuid4().hex[:8]}")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def worker_db(pg_url: str, pg_dsn: str) -> str:
    """A database of the module's own (no other memory server's outbox relay sees it)."""
    return await fresh_database(pg_url, pg_dsn)
