"""Poison messages, exhausted deliveries and the operator's dead-letter replay command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from google.rpc import code_pb2
from nats.js import JetStreamContext

from ciq_runtime.embedded import EmbeddedNats
from ciq_runtime.nats import MESSAGE_TYPE_HEADER, MSG_ID_HEADER, connect_nats, publish_proto
from contextiq.extraction.v1 import jobs_pb2
from contextiq.memory.v1 import memory_pb2
from extraction_svc import jobs
from extraction_svc.dead_letters import DeadLetter
from tests.integration.extraction.pipeline import (
    Pipeline,
    metadata_of,
    response_of,
    running_pipeline,
)
from tests.llm_server import ScriptedLLM

REPO = Path(__file__).resolve().parents[3]
SCOPE = {"user_id": "dana"}
CONSUMER = "memory-generate"


@pytest.fixture(scope="module")
async def pipeline(
    worker_db: str, worker_nats: EmbeddedNats, llm: ScriptedLLM
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(
        worker_db,
        worker_nats.url,
        llm,
        worker_ack_wait_s=2.0,
        worker_backoff_s=(2.0,),
        worker_max_deliver=2,
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def js(worker_nats: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await connect_nats(worker_nats.url, name="test-publisher")
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def dead_letter(pipeline: Pipeline, match: Callable[[DeadLetter], bool]) -> DeadLetter:
    deadline = time.monotonic() + 30.0
    while True:
        assert pipeline.worker is not None
        letters = await pipeline.worker.dead_letters.list(include_replayed=True)
        found = [d for d in letters if match(d)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError("no such dead letter")
        await asyncio.sleep(0.05)


async def settled(js: JetStreamContext) -> None:
    """Wait until the consumer holds nothing unacknowledged (the stream is then empty)."""
    deadline = time.monotonic() + 15.0
    while True:
        info = await js.consumer_info(jobs.STREAM, CONSUMER)
        stream = await js.stream_info(jobs.STREAM)
        if info.num_ack_pending == 0 and info.num_pending == 0 and stream.state.messages == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"consumer not settled: {info}")
        await asyncio.sleep(0.05)


async def test_undecodable_message_is_terminated_and_dead_lettered(
    pipeline: Pipeline, js: JetStreamContext
) -> None:
    msg_id = f"poison-{uuid.uuid4().hex[:8]}"
    await js.publish(
        jobs.GENERATE_MEMORIES_SUBJECT,
        b"\xff\xfe not a protobuf",
        headers={
            MSG_ID_HEADER: msg_id,
            MESSAGE_TYPE_HEADER: jobs_pb2.GenerateMemoriesJob.DESCRIPTOR.full_name,
        },
    )
    letter = await dead_letter(pipeline, lambda d: d.msg_id == msg_id)
    assert letter.reason == "poison"
    assert letter.attempts == 1  # terminated at once, never redelivered
    assert letter.payload == b"\xff\xfe not a protobuf"
    assert letter.error_status is not None
    assert letter.error_status.code == code_pb2.INVALID_ARGUMENT
    assert letter.subject == jobs.GENERATE_MEMORIES_SUBJECT
    await settled(js)


async def test_wrong_type_and_invalid_jobs_are_poison(
    pipeline: Pipeline, js: JetStreamContext
) -> None:
    wrong = f"wrong-type-{uuid.uuid4().hex[:8]}"
    await publish_proto(
        js,
        jobs.GENERATE_MEMORIES_SUBJECT,
        jobs_pb2.LearnProceduralJob(operation_name="operations/x", tenant_id="t"),
        msg_id=wrong,
    )
    invalid = f"invalid-{uuid.uuid4().hex[:8]}"
    await publish_proto(
        js,
        jobs.GENERATE_MEMORIES_SUBJECT,
        jobs_pb2.GenerateMemoriesJob(tenant_id="t"),  # no operation
        msg_id=invalid,
    )
    typed = await dead_letter(pipeline, lambda d: d.msg_id == wrong)
    assert "LearnProceduralJob" in typed.error
    untyped = await dead_letter(pipeline, lambda d: d.msg_id == invalid)
    assert untyped.error == "the job has no operation_name"
    assert (typed.reason, untyped.reason) == ("poison", "poison")
    await settled(js)


async def test_exhausted_deliveries_dead_letter_and_fail_the_operation(
    pipeline: Pipeline, js: JetStreamContext, tenant: str
) -> None:
    session = await pipeline.create_session(tenant)
    await pipeline.append(tenant, session.id, "user", "I like jazz.")
    await pipeline.stop_worker()
    operation = await pipeline.generate(tenant, source_type="session", source_reference=session.id)
    # SessionService goes away for longer than every delivery of the job.
    await pipeline.stop_sessions()
    try:
        await pipeline.start_worker()
        done = await pipeline.wait_done(tenant, operation.name, timeout=60.0)
    finally:
        await pipeline.start_sessions()
    assert done.error.code == code_pb2.UNAVAILABLE
    assert metadata_of(done).state == "failed"
    assert metadata_of(done).attempt == 2
    letter = await dead_letter(pipeline, lambda d: d.operation_name == operation.name)
    assert letter.reason == "deliveries_exhausted"
    assert letter.attempts == 2
    assert letter.tenant_id == tenant
    assert letter.operation_failed
    job = jobs_pb2.GenerateMemoriesJob.FromString(letter.payload)
    assert job.request.source_reference == session.id
    await settled(js)


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": pipeline.db_url,
        "NATS_URL": pipeline.nats_url,
        "CONTEXTIQ_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "extraction_svc", "dead-letters", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_dead_letter_replays_once_the_cause_is_fixed(
    pipeline: Pipeline, js: JetStreamContext, tenant: str
) -> None:
    await pipeline.stop_worker()
    operation = await pipeline.generate(
        tenant,
        source_type="facts",
        scope=SCOPE,
        facts=[memory_pb2.ExtractedFact(fact="The user likes jazz.", topic="USER_PREFERENCES")],
    )
    # A worker deployed with the wrong JWT secret: every call, even the failure report, is
    # refused, so the job ends as a dead letter while its operation still waits.
    await pipeline.start_worker(jwt_secret="not-the-secret-the-services-share-0123456789")
    letter = await dead_letter(pipeline, lambda d: d.operation_name == operation.name)
    assert letter.reason == "deliveries_exhausted"
    assert not letter.operation_failed
    assert "UNAUTHENTICATED" in letter.error or "token" in letter.error
    await settled(js)
    await pipeline.stop_worker()
    await pipeline.start_worker()  # fixed

    listed = await asyncio.to_thread(cli, pipeline, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert letter.id in [r["id"] for r in rows]
    replayed = await asyncio.to_thread(cli, pipeline, "replay", "--id", str(letter.id))
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {letter.id}" in replayed.stdout

    result = response_of(await pipeline.wait_done(tenant, operation.name))
    assert result.memories_created == 1
    assert [m.fact for m in await pipeline.list_memories(tenant)] == ["The user likes jazz."]
    assert pipeline.worker is not None
    again = await pipeline.worker.dead_letters.get(letter.id)
    assert again is not None
    assert again.replay_count == 1
    after = await asyncio.to_thread(cli, pipeline, "list", "--json")
    assert letter.id not in [json.loads(line)["id"] for line in after.stdout.splitlines()]
    await settled(js)


async def test_replay_of_an_unknown_dead_letter_fails(pipeline: Pipeline) -> None:
    missing = await asyncio.to_thread(cli, pipeline, "replay", "--id", "999999999")
    assert missing.returncode == 1
    assert "no dead letter 999999999" in missing.stderr


async def test_the_worker_recovers_when_its_consumer_is_deleted(
    pipeline: Pipeline, js: JetStreamContext, tenant: str
) -> None:
    await js.delete_consumer(jobs.STREAM, CONSUMER)
    operation = await pipeline.generate(
        tenant,
        source_type="facts",
        scope=SCOPE,
        facts=[memory_pb2.ExtractedFact(fact="The user likes opera.", topic="USER_PREFERENCES")],
    )
    result = response_of(await pipeline.wait_done(tenant, operation.name))
    assert result.memories_created == 1
    await settled(js)
