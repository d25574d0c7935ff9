"""GenerateMemories: validation, the operation + outbox transaction, idempotency, the relay."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2

from contextiq.extraction.v1 import jobs_pb2
from contextiq.memory.v1 import (
    generation_pb2,
    memory_pb2,
    memory_service_pb2_grpc,
)
from contextiq.sessions.v1 import session_pb2
from memory_svc.generation import outbox
from tests.auth_helpers import bearer
from tests.integration.memory.conftest import field_of, reason_of
from tests.integration.memory.generation.conftest import (
    GenServer,
    Metadata,
    facts_request,
    new_session,
    published_for,
    unpack_metadata,
)

pb = generation_pb2
MODEL = "openai/scripted"


async def _rows(pg_dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_facts_are_accepted_without_a_model_and_published_with_the_msg_id(
    gen_server: GenServer,
    mem: memory_service_pb2_grpc.MemoryServiceStub,
    who: Metadata,
    tenant: str,
) -> None:
    operation = await mem.GenerateMemories(
        facts_request({"user_id": "u1"}, "The user likes tea."), metadata=who
    )

    assert operation.name.startswith("operations/")
    assert not operation.done
    metadata = unpack_metadata(operation)
    assert metadata.state == "queued"
    assert metadata.source_type == "facts"
    assert dict(metadata.scope) == {"user_id": "u1"}
    messages = await published_for(gen_server.nats.url, operation.name)
    assert len(messages) == 1
    message = messages[0]
    assert message.subject == "contextiq.jobs.memory.generate"
    job = jobs_pb2.GenerateMemoriesJob.FromString(message.data)
    assert job.operation_name == operation.name
    assert job.tenant_id == tenant
    assert job.request.bank_id == "default"
    assert [f.fact for f in job.request.facts] == ["The user likes tea."]
    assert job.enqueued_at.seconds > 0


async def test_session_and_events_sources_need_a_model(
    gen_server: GenServer, mem: memory_service_pb2_grpc.MemoryServiceStub, who: Metadata
) -> None:
    session = await new_session(gen_server.sessions, who)
    for request in (
        pb.GenerateMemoriesRequest(source_type="session", source_reference=session.id),
        pb.GenerateMemoriesRequest(
            source_type="events",
            scope={"user_id": "u1"},
            events=[session_pb2.Event(author="user")],
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mem.GenerateMemories(request, metadata=who)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CONTEXTIQ_LLM_MODEL" in (info.value.details() or "")
        assert "extraction_model" in (info.value.details() or "")
        assert reason_of(info.value) == "MODEL_NOT_CONFIGURED"


async def test_session_source_defaults_to_the_session_scope_then_its_user(
    gen_server: GenServer, mem: memory_service_pb2_grpc.MemoryServiceStub, who: Metadata
) -> None:
    scoped = await new_session(gen_server.sessions, who, scope={"user_id": "u7", "app": "x"})
    bare = await new_session(gen_server.sessions, who, user_id="u8")
    config = pb.GenerationConfig(model=MODEL)

    first = await mem.GenerateMemories(
        pb.GenerateMemoriesRequest(
            source_type="session", source_reference=scoped.id, config=config
        ),
        metadata=who,
    )
    second = await mem.GenerateMemories(
        pb.GenerateMemoriesRequest(source_type="session", source_reference=bare.id, config=config),
        metadata=who,
    )

    assert dict(unpack_metadata(first).scope) == {"user_id": "u7", "app": "x"}
    assert dict(unpack_metadata(second).scope) == {"user_id": "u8"}
    assert unpack_metadata(second).source_reference == bare.id


async def test_a_session_of_another_tenant_is_not_found(
    gen_server: GenServer, mem: memory_service_pb2_grpc.MemoryServiceStub, who: Metadata
) -> None:
    foreign = await new_session(gen_server.sessions, bearer(f"other-{uuid.uuid4().hex[:8]}"))
    for reference in (foreign.id, str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mem.GenerateMemories(
                pb.GenerateMemoriesRequest(
                    source_type="session",
                    source_reference=reference,
                    config=pb.GenerationConfig(model=MODEL),
                ),
                metadata=who,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, reference


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no source_type", {}, "source_type"),
    ("unknown source_type", {"source_type": "emails"}, "source_type"),
    ("session without reference", {"source_type": "session"}, "source_reference"),
    ("events empty", {"source_type": "events", "scope": {"user_id": "u"}}, "events"),
    ("facts empty", {"source_type": "facts", "scope": {"user_id": "u"}}, "facts"),
    (
        "fact without text",
        {
            "source_type": "facts",
            "scope": {"user_id": "u"},
            "facts": [memory_pb2.ExtractedFact(fact="  ")],
        },
        "facts[0].fact",
    ),
    (
        "facts without scope",
        {"source_type": "facts", "facts": [memory_pb2.ExtractedFact(fact="x")]},
        "scope",
    ),
    (
        "unknown topic",
        {
            "source_type": "facts",
            "scope": {"user_id": "u"},
            "facts": [memory_pb2.ExtractedFact(fact="x")],
            "config": pb.GenerationConfig(topics=["USER_PREFERENCES", "NOPE"]),
        },
        "config.topics[1]",
    ),
    (
        "negative ttl",
        {
            "source_type": "facts",
            "scope": {"user_id": "u"},
            "facts": [memory_pb2.ExtractedFact(fact="x")],
            "config": pb.GenerationConfig(ttl=duration_pb2.Duration(seconds=-5)),
        },
        "config.ttl",
    ),
    (
        "start after end",
        {
            "source_type": "session",
            "source_reference": str(uuid.uuid4()),
            "start_time": _ts(2000),
            "end_time": _ts(1000),
            "config": pb.GenerationConfig(model=MODEL),
        },
        "start_time",
    ),
]


@pytest.mark.parametrize(("label", "fields", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_requests_name_the_field_and_write_nothing(
    mem: memory_service_pb2_grpc.MemoryServiceStub,
    who: Metadata,
    tenant: str,
    pg_dsn: str,
    label: str,
    fields: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mem.GenerateMemories(pb.GenerateMemoriesRequest(**fields), metadata=who)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
    assert field_of(info.value) == field, label
    assert not await _rows(pg_dsn, "SELECT 1 FROM memory.operations WHERE tenant_id = $1", tenant)


async def test_unknown_bank_is_not_found(
    mem: memory_service_pb2_grpc.MemoryServiceStub, who: Metadata
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mem.GenerateMemories(
            facts_request({"user_id": "u1"}, "x", bank_id="no-such-bank"), metadata=who
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_request_id_returns_the_first_operation_even_under_concurrent_retries(
    gen_server: GenServer,
    mem: memory_service_pb2_grpc.MemoryServiceStub,
    who: Metadata,
    tenant: str,
    pg_dsn: str,
) -> None:
    request = facts_request({"user_id": "u1"}, "The user lives in Lyon.", request_id="retry-1")

    replies = await asyncio.gather(*(mem.GenerateMemories(request, metadata=who) for _ in range(8)))
    again = await mem.GenerateMemories(request, metadata=who)

    names = {reply.name for reply in replies} | {again.name}
    assert len(names) == 1
    rows = await _rows(pg_dsn, "SELECT name FROM memory.operations WHERE tenant_id = $1", tenant)
    assert [row["name"] for row in rows] == [again.name]
    assert len(await published_for(gen_server.nats.url, again.name)) == 1
    # Another tenant's same key is its own operation.
    other = await mem.GenerateMemories(request, metadata=bearer(f"o-{uuid.uuid4().hex[:8]}"))
    assert other.name != again.name


async def test_operation_and_outbox_row_commit_together(
    gen_server: GenServer,
    mem: memory_service_pb2_grpc.MemoryServiceStub,
    who: Metadata,
    tenant: str,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_enqueue(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(outbox, "enqueue", broken_enqueue)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mem.GenerateMemories(facts_request({"user_id": "u1"}, "x"), metadata=who)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert not await _rows(pg_dsn, "SELECT 1 FROM memory.operations WHERE tenant_id = $1", tenant)
    assert not await _rows(
        pg_dsn, "SELECT 1 FROM memory.generation_outbox WHERE tenant_id = $1", tenant
    )


async def test_operations_get_and_list_show_the_generation(
    mem: memory_service_pb2_grpc.MemoryServiceStub,
    ops: operations_pb2_grpc.OperationsStub,
    who: Metadata,
) -> None:
    operation = await mem.GenerateMemories(facts_request({"user_id": "u1"}, "x"), metadata=who)
    got = await ops.GetOperation(
        operations_pb2.GetOperationRequest(name=operation.name), metadata=who
    )
    listed = await ops.ListOperations(operations_pb2.ListOperationsRequest(), metadata=who)
    assert got.name == operation.name
    assert [o.name for o in listed.operations] == [operation.name]
    assert unpack_metadata(got).state == "queued"


async def test_the_job_carries_the_request_trace(
    gen_server: GenServer, mem: memory_service_pb2_grpc.MemoryServiceStub, who: Metadata
) -> None:
    from ciq_runtime import telemetry

    exporter = telemetry.install_test_exporter()
    try:
        trace_id = uuid.uuid4().hex
        traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
        operation = await mem.GenerateMemories(
            facts_request({"user_id": "u1"}, "traced"),
            metadata=(*who, ("traceparent", traceparent)),
        )
        message = (await published_for(gen_server.nats.url, operation.name))[0]
    finally:
        exporter.shutdown()

    # The consumer continues the request's trace (the publish span is its child).
    assert message.headers["traceparent"].split("-")[1] == trace_id


async def test_the_accepting_request_publishes_its_job_without_the_relay(
    gen_server: GenServer,
    mem: memory_service_pb2_grpc.MemoryServiceStub,
    who: Metadata,
    tenant: str,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The relay's passes read nothing: only the request's own publish can reach the stream.
    swept: list[int] = []

    async def no_pass(self: outbox.Relay) -> int:
        swept.append(1)
        return 0

    monkeypatch.setattr(outbox.Relay, "publish_due", no_pass)
    operation = await mem.GenerateMemories(facts_request({"user_id": "u1"}, "eager"), metadata=who)

    assert len(await published_for(gen_server.nats.url, operation.name)) == 1
    for _ in range(100):  # the row goes once the PubAck is in
        rows = await _rows(
            pg_dsn, "SELECT 1 FROM memory.generation_outbox WHERE tenant_id = $1", tenant
        )
        if not rows:
            break
        await asyncio.sleep(0.05)
    assert rows == []
