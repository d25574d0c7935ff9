"""The worker's /metrics: jobs by state, job duration, queue wait, dead letters, backlog."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from ciq_runtime.embedded import EmbeddedNats
from ciq_runtime.metrics import ProcessMetrics
from ciq_runtime.nats import MESSAGE_TYPE_HEADER, MSG_ID_HEADER, connect_nats
from ciq_runtime.settings import Settings
from contextiq.extraction.v1 import jobs_pb2
from contextiq.memory.v1 import memory_pb2
from extraction_svc import jobs
from tests.integration.extraction.pipeline import Pipeline, response_of, running_pipeline
from tests.integration.observability.conftest import Samples, fresh_database, parse_samples, value

JOB = "memory-generate"


@pytest.fixture(scope="module")
async def nats(service_tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats(store_dir=service_tmp_path / f"nats-jobs-{uuid.uuid4().hex[:8]}")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def pipeline(pg_url: str, pg_dsn: str, nats: EmbeddedNats) -> AsyncIterator[Pipeline]:
    db = await fresh_database(pg_url, pg_dsn)
    async with running_pipeline(db, nats.url, None, model=None) as running:
        yield running


@pytest.fixture(scope="module")
async def endpoint() -> AsyncIterator[str]:
    """The worker process's /metrics (the registry is per process)."""
    running = await ProcessMetrics.start(
        Settings.from_env({}, service_name="extraction"), tenant_counts=(), port=0
    )
    assert running.server is not None
    try:
        yield f"http://127.0.0.1:{running.server.port}/metrics"
    finally:
        await running.stop()


async def _scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as client:
        reply = await client.get(url, timeout=10)
    assert reply.status_code == 200
    return parse_samples(reply.text)


async def _scrape_until(
    url: str,
    done: Callable[[Samples], bool],
    *,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = await _scrape(url)
        if done(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError("the metrics did not reach the expected values")
        await asyncio.sleep(0.1)


async def test_jobs_by_state_duration_queue_wait_dead_letters_and_backlog(
    pipeline: Pipeline, nats: EmbeddedNats, endpoint: str
) -> None:
    before = await _scrape(endpoint)

    def delta(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    tenant = f"t-{uuid.uuid4().hex[:10]}"
    operation = await pipeline.generate(
        tenant,
        source_type="facts",
        scope={"user_id": "dana"},
        facts=[memory_pb2.ExtractedFact(fact="The user has two cats.", topic="USER_PREFERENCES")],
    )
    assert response_of(await pipeline.wait_done(tenant, operation.name)).memories_created == 1

    nc = await connect_nats(nats.url, name="metrics-test")
    try:
        await nc.jetstream().publish(
            jobs.GENERATE_MEMORIES_SUBJECT,
            b"\xff not a protobuf",
            headers={
                MSG_ID_HEADER: f"poison-{uuid.uuid4().hex[:8]}",
                MESSAGE_TYPE_HEADER: jobs_pb2.GenerateMemoriesJob.DESCRIPTOR.full_name,
            },
        )
    finally:
        await nc.drain()

    after = await _scrape_until(
        endpoint,
        lambda s: (
            delta(s, "contextiq_jobs_total", job=JOB, state="succeeded") >= 1
            and delta(s, "contextiq_jobs_total", job=JOB, state="poison") >= 1
        ),
    )
    assert delta(after, "contextiq_jobs_total", job=JOB, state="succeeded") == 1
    assert delta(after, "contextiq_jobs_total", job=JOB, state="poison") == 1
    assert delta(after, "contextiq_dead_letters_total", job=JOB) == 1
    assert delta(after, "contextiq_job_duration_seconds_count", job=JOB, state="succeeded") == 1
    # Only deliveries that started count in the queue wait (the poison message never started).
    assert delta(after, "contextiq_job_queue_wait_seconds_count", job=JOB) == 1
    assert value(after, "contextiq_jobs_in_progress", job=JOB) == 0
    # The runner reads its consumer's backlog as soon as it starts: the series exist.
    backlog = {"stream": jobs.STREAM, "consumer": JOB}
    assert ("contextiq_queue_pending_messages", frozenset(backlog.items())) in after
    assert ("contextiq_queue_ack_pending_messages", frozenset(backlog.items())) in after
