"""Operations of generations: cancel, wait, delete, watch (gRPC and SSE), REST, NATS outages."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import grpc
import httpx
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2

from contextiq.memory.v1 import memory_job_service_pb2, memory_service_pb2
from tests.auth_helpers import bearer_headers
from tests.integration.memory.generation.conftest import (
    GenServer,
    Metadata,
    eventually,
    facts_request,
    published_for,
    stream_messages,
    unpack_metadata,
)
from tests.integration.memory.generation.test_generation_apply import (
    SCOPE,
    JobStub,
    MemStub,
    action,
    apply_request,
    facts_of,
    get_op,
    new_operation,
    report,
)

jb = memory_job_service_pb2


async def test_cancel_of_a_queued_generation_ends_it_at_once(
    gen_server: GenServer,
    mem: MemStub,
    jobs: JobStub,
    ops: operations_pb2_grpc.OperationsStub,
    who: Metadata,
    tenant: str,
) -> None:
    operation = await new_operation(mem, who)

    await ops.CancelOperation(operations_pb2.CancelOperationRequest(name=operation), metadata=who)

    cancelled = await get_op(ops, who, operation)
    assert cancelled.done
    assert cancelled.error.code == code_pb2.CANCELLED
    assert unpack_metadata(cancelled).state == "cancelled"
    # The worker that already holds the job learns it from its first report, and cannot apply.
    assert await report(jobs, who, tenant, operation, "extracting") == cancelled
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.ApplyGeneration(
            apply_request(tenant, operation, action("CREATE", fact="x")), metadata=who
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await facts_of(mem, who) == []
    # The job is still delivered (the worker skips it): no race with the relay decides it.
    assert len(await published_for(gen_server.nats.url, operation)) == 1
    # Cancelling again (or a finished operation) is a no-op.
    await ops.CancelOperation(operations_pb2.CancelOperationRequest(name=operation), metadata=who)
    assert await get_op(ops, who, operation) == cancelled


async def test_cancel_of_a_running_generation_takes_effect_at_the_next_report_or_apply(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    reported = await new_operation(mem, who)
    applied = await new_operation(mem, who)
    for operation in (reported, applied):
        await report(jobs, who, tenant, operation, "extracting", attempt=1)
        await ops.CancelOperation(
            operations_pb2.CancelOperationRequest(name=operation), metadata=who
        )
        running = await get_op(ops, who, operation)
        assert not running.done
        assert unpack_metadata(running).state == "extracting"

    after_report = await report(jobs, who, tenant, reported, "consolidating")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.ApplyGeneration(
            apply_request(tenant, applied, action("CREATE", fact="x")), metadata=who
        )

    assert after_report.done
    assert after_report.error.code == code_pb2.CANCELLED
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    after_apply = await get_op(ops, who, applied)
    assert after_apply.done
    assert after_apply.error.code == code_pb2.CANCELLED
    assert await facts_of(mem, who) == []


async def test_wait_returns_when_done_or_at_the_timeout(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)
    short = await ops.WaitOperation(
        operations_pb2.WaitOperationRequest(
            name=operation, timeout=duration_pb2.Duration(nanos=200_000_000)
        ),
        metadata=who,
    )
    assert not short.done

    waiting = asyncio.ensure_future(
        ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=operation, timeout=duration_pb2.Duration(seconds=30)
            ),
            metadata=who,
        )
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await jobs.ApplyGeneration(
        apply_request(tenant, operation, action("CREATE", fact="The user rows.")), metadata=who
    )
    finished = await asyncio.wait_for(waiting, timeout=10)

    assert finished.done
    assert unpack_metadata(finished).memories_created == 1
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=operation, timeout=duration_pb2.Duration(seconds=-1)
            ),
            metadata=who,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_only_finished_operations(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ops.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=operation), metadata=who
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await jobs.ApplyGeneration(apply_request(tenant, operation), metadata=who)

    await ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=operation), metadata=who)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_op(ops, who, operation)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def _drive(jobs: JobStub, who: Metadata, tenant: str, operation: str) -> None:
    for state in ("extracting", "consolidating", "applying"):
        await asyncio.sleep(0.05)
        await report(jobs, who, tenant, operation, state, attempt=1)
    await asyncio.sleep(0.05)
    await jobs.ApplyGeneration(
        apply_request(tenant, operation, action("CREATE", fact="The user surfs.")), metadata=who
    )


async def test_watch_streams_every_state_and_ends_when_done(
    mem: MemStub, jobs: JobStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)
    seen: list[str] = []

    async def watch() -> None:
        stream = mem.WatchOperation(
            memory_service_pb2.WatchOperationRequest(name=operation), metadata=who
        )
        async for update in stream:
            seen.append(unpack_metadata(update).state)

    watcher = asyncio.create_task(watch())
    await eventually(lambda: asyncio.sleep(0, result=bool(seen)))
    await _drive(jobs, who, tenant, operation)
    await asyncio.wait_for(watcher, timeout=10)

    assert seen == ["queued", "extracting", "consolidating", "applying", "done"]
    # Watching a finished operation sends it once and ends.
    again = [
        unpack_metadata(update).state
        async for update in mem.WatchOperation(
            memory_service_pb2.WatchOperationRequest(name=operation), metadata=who
        )
    ]
    assert again == ["done"]


def _sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            event = {}
            for line in block.split("\n"):
                name, _, value = line.partition(": ")
                event[name] = value
            events.append(event)
    return events


async def test_generate_and_watch_over_rest(
    gen_http: httpx.AsyncClient, jobs: JobStub, who: Metadata, tenant: str
) -> None:
    headers = bearer_headers(tenant)
    accepted = await gen_http.post(
        "/api/v1/memories/generate",
        json={
            "source_type": "facts",
            "scope": {"user_id": "u1"},
            "facts": [{"fact": "The user sails."}],
            "request_id": "rest-1",
        },
        headers=headers,
    )
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    name = body["name"]
    assert body["metadata"]["state"] == "queued"
    retried = await gen_http.post(
        "/api/v1/memories/generate",
        json={
            "source_type": "facts",
            "scope": {"user_id": "u1"},
            "facts": [{"fact": "x"}],
            "request_id": "rest-1",
        },
        headers=headers,
    )
    assert retried.json()["name"] == name

    async def watch() -> httpx.Response:
        return await gen_http.get(f"/api/v1/{name}:watch", headers=headers)

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    await _drive(jobs, who, tenant, name)
    response = await asyncio.wait_for(watching, timeout=15)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    states = [json.loads(e["data"])["metadata"]["state"] for e in _sse(response.text)]
    assert states[0] == "queued"
    assert states[-1] == "done"
    assert states == sorted(
        states, key=["queued", "extracting", "consolidating", "applying", "done"].index
    )
    last = json.loads(_sse(response.text)[-1]["data"])
    assert last["done"] is True
    assert last["response"]["memories_created"] == 1
    fetched = await gen_http.get(f"/v1/{name}", headers=headers)
    assert fetched.status_code == 200
    assert fetched.json()["done"] is True
    bad = await gen_http.post(
        "/api/v1/memories/generate", json={"source_type": "emails"}, headers=headers
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_ARGUMENT"
    no_model = await gen_http.post(
        "/api/v1/memories/generate",
        json={"source_type": "events", "scope": {"user_id": "u1"}, "events": [{"author": "user"}]},
        headers=headers,
    )
    assert no_model.status_code == 400
    assert no_model.json()["error"]["code"] == "FAILED_PRECONDITION"


async def test_rest_cancel_and_delete(gen_http: httpx.AsyncClient, tenant: str) -> None:
    headers = bearer_headers(tenant)
    accepted = await gen_http.post(
        "/api/v1/memories/generate",
        json={"source_type": "facts", "scope": {"user_id": "u1"}, "facts": [{"fact": "x"}]},
        headers=headers,
    )
    name = accepted.json()["name"]
    running = await gen_http.delete(f"/v1/{name}", headers=headers)
    assert running.status_code == 400
    assert running.json()["error"]["code"] == "FAILED_PRECONDITION"
    cancelled = await gen_http.post(f"/v1/{name}:cancel", json={}, headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    got = (await gen_http.get(f"/v1/{name}", headers=headers)).json()
    assert got["done"] is True
    assert got["error"]["code"] == code_pb2.CANCELLED
    deleted = await gen_http.delete(f"/v1/{name}", headers=headers)
    assert deleted.status_code == 200
    assert (await gen_http.get(f"/v1/{name}", headers=headers)).status_code == 404


async def test_a_job_accepted_while_nats_is_down_is_published_when_it_returns(
    gen_server: GenServer, mem: MemStub, who: Metadata, tenant: str, pg_dsn: str
) -> None:
    nats_server = gen_server.nats
    await nats_server.stop()
    try:
        operation = await new_operation(mem, who, "accepted during the outage")
        conn = await asyncpg.connect(pg_dsn)
        try:
            # The relay tries (and fails, or waits for the connection): the row stays.
            await asyncio.sleep(1.0)
            rows = await conn.fetch(
                "SELECT operation_name FROM memory.generation_outbox WHERE tenant_id = $1", tenant
            )
            assert [r["operation_name"] for r in rows] == [operation]
        finally:
            await conn.close()
    finally:
        await nats_server.start()

    messages = await published_for(nats_server.url, operation, within=60.0)

    assert len(messages) == 1
    conn = await asyncpg.connect(pg_dsn)
    try:
        await eventually(lambda: _empty(conn, tenant), within=30.0)
    finally:
        await conn.close()
    # Published exactly once even after more sweeps.
    await asyncio.sleep(1.0)
    ids = [m.headers.get("Nats-Msg-Id") for m in await stream_messages(nats_server.url)]
    assert ids.count(operation) == 1


async def _empty(conn: asyncpg.Connection, tenant: str) -> bool:
    count = await conn.fetchval(
        "SELECT count(*) FROM memory.generation_outbox WHERE tenant_id = $1", tenant
    )
    return bool(count == 0)


async def test_several_relays_publish_each_job_once(
    pg_url: str, gen_server: GenServer, mem: MemStub, who: Metadata
) -> None:
    from tests.integration.memory.generation.conftest import start_gen_server

    second = await start_gen_server(pg_url, gen_server.nats, gen_server.sessions)
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            from contextiq.memory.v1 import memory_service_pb2_grpc

            other = memory_service_pb2_grpc.MemoryServiceStub(channel)
            names = await asyncio.gather(
                *(
                    (mem if i % 2 else other).GenerateMemories(
                        facts_request(SCOPE, f"fact {i}"), metadata=who
                    )
                    for i in range(20)
                )
            )
        for operation in names:
            messages = await published_for(gen_server.nats.url, operation.name)
            assert len(messages) == 1
    finally:
        await second.server.stop()


async def test_failed_publishes_are_retried_with_backoff_until_jetstream_acks(
    gen_server: GenServer, mem: MemStub, who: Metadata, tenant: str, pg_dsn: str
) -> None:
    import nats

    from ciq_runtime.nats import ensure_stream
    from memory_svc.generation.jobs_stream import JOBS_STREAM, JOBS_SUBJECTS

    client = await nats.connect(gen_server.nats.url)
    conn = await asyncpg.connect(pg_dsn)
    try:
        js = client.jetstream()
        # Connected, but no stream captures the subject: every publish fails.
        await js.delete_stream(JOBS_STREAM)
        operation = await new_operation(mem, who, "published after a failure")

        async def failed_twice() -> bool:
            row = await conn.fetchrow(
                "SELECT attempts, last_error FROM memory.generation_outbox "
                "WHERE operation_name = $1",
                operation,
            )
            return row is not None and row["attempts"] >= 2 and row["last_error"] != ""

        await eventually(failed_twice, within=30.0)
        await ensure_stream(js, name=JOBS_STREAM, subjects=JOBS_SUBJECTS, retention="workqueue")

        messages = await published_for(gen_server.nats.url, operation, within=60.0)

        assert len(messages) == 1
        await eventually(lambda: _empty(conn, tenant), within=30.0)
    finally:
        await conn.close()
        await client.close()


async def test_a_memory_service_started_while_nats_is_down_accepts_and_publishes_later(
    pg_url: str, gen_server: GenServer, who: Metadata
) -> None:
    from contextiq.memory.v1 import memory_service_pb2_grpc
    from tests.integration.memory.generation.conftest import start_gen_server

    nats_server = gen_server.nats
    await nats_server.stop()
    late: GenServer | None = None
    try:
        late = await start_gen_server(pg_url, nats_server, gen_server.sessions)
        async with grpc.aio.insecure_channel(late.address) as channel:
            stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
            operation = await stub.GenerateMemories(
                facts_request(SCOPE, "accepted before NATS ever answered"), metadata=who
            )
        assert not operation.done
        await nats_server.start()
        messages = await published_for(nats_server.url, operation.name, within=60.0)
        assert len(messages) == 1
    finally:
        if nats_server.pid is None:
            await nats_server.start()
        if late is not None:
            await late.server.stop()
