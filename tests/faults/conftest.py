"""Fault tests: the services as separate processes, killed and restarted mid-work."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ciq_runtime.embedded import EmbeddedNats
from tests.faults.cluster import Cluster, EchoModel
from tests.helpers import free_port
from tests.integration.extraction.pipeline import fresh_database
from tests.llm_server import ScriptedLLM


@pytest.fixture
async def cluster(pg_url: str, pg_dsn: str) -> AsyncIterator[Cluster]:
    """A fresh cluster per test: its own database, NATS, LLM script and processes."""
    tmp = Path(tempfile.mkdtemp(prefix="ciq-faults-"))
    db_url = await fresh_database(pg_url, pg_dsn)
    db_dsn = db_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    nats = EmbeddedNats(store_dir=tmp / "nats", port=free_port())
    await nats.start()
    model = EchoModel()
    llm = await ScriptedLLM(fallback=model).start()
    running = Cluster(
        tmp=tmp,
        db_url=db_url,
        db_dsn=db_dsn,
        nats=nats,
        llm=llm,
        model=model,
        worker_env={
            "CONTEXTIQ_WORKER_ACK_WAIT_SECONDS": "2",
            "CONTEXTIQ_WORKER_BACKOFF_SECONDS": "2",
            "CONTEXTIQ_WORKER_MAX_DELIVER": "30",
        },
    )
    try:
        yield running
    finally:
        await running.stop()
        await llm.stop()
        await nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def tenant() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"
