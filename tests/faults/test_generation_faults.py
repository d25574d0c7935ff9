"""Memory generation survives crashes exactly once: the worker killed with -9 mid-job, NATS
restarted while jobs are queued, the memory service restarted during apply. Afterwards every
operation is done, once: no lost job, no duplicated memory, no duplicated revision (counted
in Postgres)."""

from __future__ import annotations

import signal

import pytest

from ciq_runtime.nats import connect_nats
from extraction_svc import jobs
from tests.faults.cluster import Cluster, metadata_of, response_of
from tests.helpers import async_wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TURNS = ["I live in Lisbon.", "I have two cats."]


async def _sessions(cluster: Cluster, tenant: str, count: int) -> list[str]:
    # One user per session: each generation has its own scope, so every fact is created.
    return [
        await cluster.session_with_turns(tenant, f"user-{i}", [f"{t} (#{i})" for t in TURNS])
        for i in range(count)
    ]


async def _check_exactly_once(cluster: Cluster, tenant: str, names: list[str]) -> dict[str, int]:
    operations = await cluster.wait_all_done(tenant, names)
    created = [response_of(op).memories_created for op in operations]
    assert created == [len(TURNS)] * len(names), created
    counts = await cluster.counts(tenant)
    expected = len(TURNS) * len(names)
    assert counts == {
        "memories": expected,
        "distinct": expected,
        "revisions": expected,
        "repeated_revisions": 0,
        "dead_letters": 0,
    }, counts
    attempts = [metadata_of(op).attempt for op in operations]
    print(f"operations={len(names)} attempts={attempts} counts={counts}")
    return counts


async def test_worker_killed_mid_job(cluster: Cluster, tenant: str) -> None:
    for service in ("sessions", "memory", "extraction"):
        await cluster.start(service)
    sessions = await _sessions(cluster, tenant, 6)
    cluster.model.delay_s = 1.5  # every model call is slow: jobs are mid-flight for a while
    names = [await cluster.generate(tenant, s) for s in sessions]
    assert await async_wait_for(lambda: cluster.model.calls >= 1, timeout=60)
    cluster.kill("extraction")  # kill -9 while it waits for the model
    killed_at_calls = cluster.model.calls
    cluster.model.delay_s = 0.2
    await cluster.start("extraction")
    await _check_exactly_once(cluster, tenant, names)
    operations = [await cluster.operation(tenant, n) for n in names]
    # The jobs the dead worker held were delivered again (after ack_wait) and finished once.
    assert max(metadata_of(op).attempt for op in operations) >= 2
    print(f"model calls before the kill: {killed_at_calls}, in all: {cluster.model.calls}")


async def test_nats_restarted_while_jobs_are_queued(cluster: Cluster, tenant: str) -> None:
    cluster.worker_env["CONTEXTIQ_WORKER_CONCURRENCY"] = "2"
    for service in ("sessions", "memory", "extraction"):
        await cluster.start(service)
    sessions = await _sessions(cluster, tenant, 10)
    cluster.model.delay_s = 0.5
    names = [await cluster.generate(tenant, s) for s in sessions[:8]]
    # Two jobs running, the rest queued in the stream: restart NATS under them.
    assert await async_wait_for(lambda: cluster.model.calls >= 1, timeout=60)
    nc = await connect_nats(cluster.nats.url, name="fault-test")
    queued = (await nc.jetstream().stream_info(jobs.STREAM)).state.messages
    await nc.close()
    assert queued >= 4, queued
    await cluster.nats.stop()
    # Requests accepted while NATS is down wait in the memory service's outbox.
    names += [await cluster.generate(tenant, s) for s in sessions[8:]]
    await cluster.nats.start()
    await _check_exactly_once(cluster, tenant, names)
    print(f"jobs in the stream when NATS stopped: {queued}")


async def test_memory_service_restarted_during_apply(cluster: Cluster, tenant: str) -> None:
    for service in ("sessions", "memory", "extraction"):
        await cluster.start(service)
    sessions = await _sessions(cluster, tenant, 8)
    names = [await cluster.generate(tenant, s) for s in sessions]
    # The "applying" state lasts only as long as one ApplyGeneration: polling may miss it, so
    # the kill comes at the first operation seen consolidating or applying, with the other
    # jobs (run concurrently) at every step, applies among them.
    applying = await cluster.wait_state(tenant, names, {"consolidating", "applying"})
    cluster.kill("memory")  # kill -9 with ApplyGeneration / FindSimilarMemories in flight
    await cluster.start("memory")
    await _check_exactly_once(cluster, tenant, names)
    print(f"memory killed while {applying} was consolidating or applying")


async def test_sigterm_requeues_running_jobs(cluster: Cluster, tenant: str) -> None:
    for service in ("sessions", "memory", "extraction"):
        await cluster.start(service)
    sessions = await _sessions(cluster, tenant, 3)
    cluster.model.delay_s = 5.0  # longer than the stop grace (2 s): jobs are handed back
    names = [await cluster.generate(tenant, s) for s in sessions]
    assert await async_wait_for(lambda: cluster.model.calls >= 1, timeout=60)
    cluster.kill("extraction", signal.SIGTERM)
    cluster.model.delay_s = 0.0
    await cluster.start("extraction")
    await _check_exactly_once(cluster, tenant, names)
