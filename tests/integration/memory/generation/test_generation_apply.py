"""MemoryJobService: bank, similar memories, idempotent apply, watermarks, progress reports."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2

from contextiq.common.v1 import common_pb2
from contextiq.memory.v1 import (
    generation_pb2,
    memory_job_service_pb2,
    memory_job_service_pb2_grpc,
    memory_pb2,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from tests.auth_helpers import bearer
from tests.integration.memory.conftest import create, field_of, reason_of, search
from tests.integration.memory.generation.conftest import (
    GenServer,
    Metadata,
    facts_request,
    new_session,
    unpack_metadata,
    unpack_response,
)

jb = memory_job_service_pb2
gp = generation_pb2
MemStub = memory_service_pb2_grpc.MemoryServiceStub
JobStub = memory_job_service_pb2_grpc.MemoryJobServiceStub
SCOPE = {"user_id": "u1"}


def action(kind: str, memory_id: str = "", fact: str = "", **fields: Any) -> Any:
    return memory_pb2.ConsolidationAction(action=kind, memory_id=memory_id, fact=fact, **fields)


async def new_operation(mem: MemStub, who: Metadata, *facts: str, **fields: Any) -> str:
    operation = await mem.GenerateMemories(
        facts_request(SCOPE, *(facts or ("a fact",)), **fields), metadata=who
    )
    return str(operation.name)


def apply_request(tenant: str, operation: str, *actions: Any, **fields: Any) -> Any:
    fields.setdefault("scope", SCOPE)
    return jb.ApplyGenerationRequest(
        operation_name=operation, tenant_id=tenant, actions=list(actions), **fields
    )


async def get_op(
    ops: operations_pb2_grpc.OperationsStub, who: Metadata, name: str
) -> operations_pb2.Operation:
    operation: operations_pb2.Operation = await ops.GetOperation(
        operations_pb2.GetOperationRequest(name=name), metadata=who
    )
    return operation


async def facts_of(mem: MemStub, who: Metadata) -> list[str]:
    listed = await mem.ListMemories(memory_service_pb2.ListMemoriesRequest(), metadata=who)
    return sorted(m.fact for m in listed.memories)


# --------------------------------------------------------------------------------- GetJobBank


async def test_get_job_bank_is_the_effective_config(
    jobs: JobStub, who: Metadata, tenant: str, gen_channel: grpc.aio.Channel
) -> None:
    default = await jobs.GetJobBank(jb.GetJobBankRequest(tenant_id=tenant), metadata=who)
    assert default.id == "default"
    assert len(default.topics) > 0
    banks = memory_service_pb2_grpc.MemoryBankServiceStub(gen_channel)
    await banks.CreateMemoryBank(
        memory_service_pb2.CreateMemoryBankRequest(
            memory_bank=memory_pb2.MemoryBank(extraction_model="openai/bank-model"),
            memory_bank_id="work",
        ),
        metadata=who,
    )
    work = await jobs.GetJobBank(
        jb.GetJobBankRequest(tenant_id=tenant, bank_id="work"), metadata=who
    )
    assert work.extraction_model == "openai/bank-model"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.GetJobBank(jb.GetJobBankRequest(tenant_id=tenant, bank_id="nope"), metadata=who)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------ FindSimilarMemories


async def test_similar_memories_come_from_exactly_the_scope(
    mem: MemStub, jobs: JobStub, who: Metadata, tenant: str
) -> None:
    tea = await create(mem, who, "The user drinks green tea every morning.")
    await create(mem, who, "The user owns a red bicycle.")
    await create(mem, who, "The user drinks green tea every morning.", scope={"user_id": "u2"})
    await create(mem, who, "The user drinks green tea every morning.", scope={**SCOPE, "x": "y"})
    await create(
        mem, bearer(f"x-{uuid.uuid4().hex[:8]}"), "The user drinks green tea every morning."
    )
    gone = await create(mem, who, "The user drinks black tea at night.")
    await mem.DeleteMemory(memory_service_pb2.DeleteMemoryRequest(id=gone.id), metadata=who)

    reply = await jobs.FindSimilarMemories(
        jb.FindSimilarMemoriesRequest(
            tenant_id=tenant,
            scope=SCOPE,
            facts=[
                memory_pb2.ExtractedFact(fact="User likes green tea"),
                memory_pb2.ExtractedFact(fact="bike"),
            ],
            top_k=5,
        ),
        metadata=who,
    )

    assert [r.fact_index for r in reply.results] == [0, 1]
    first = reply.results[0]
    assert first.memories[0].id == tea.id
    ids = {m.id for r in reply.results for m in r.memories}
    assert gone.id not in ids
    assert all(dict(m.scope) == SCOPE for r in reply.results for m in r.memories)
    assert len(ids) == 2  # only the two live memories of exactly the scope
    for result in reply.results:
        assert len(result.similarities) == len(result.memories)
        assert list(result.similarities) == sorted(result.similarities, reverse=True)
        assert all(-1.0 <= s <= 1.0 for s in result.similarities)
    assert reply.results[1].memories[0].fact == "The user owns a red bicycle."
    one = await jobs.FindSimilarMemories(
        jb.FindSimilarMemoriesRequest(
            tenant_id=tenant, scope=SCOPE, facts=[memory_pb2.ExtractedFact(fact="tea")], top_k=1
        ),
        metadata=who,
    )
    assert len(one.results[0].memories) == 1
    for bad, field in (
        ({"top_k": 51}, "top_k"),
        ({"facts": []}, "facts"),
        ({"scope": {}}, "scope"),
    ):
        request = jb.FindSimilarMemoriesRequest(
            tenant_id=tenant, scope=SCOPE, facts=[memory_pb2.ExtractedFact(fact="tea")]
        )
        for name, value in bad.items():
            request.ClearField(name)  # type: ignore[arg-type]
            if isinstance(value, int):
                setattr(request, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await jobs.FindSimilarMemories(request, metadata=who)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(info.value) == field


# ---------------------------------------------------------------------------- ApplyGeneration


async def test_apply_creates_updates_deletes_once_with_revisions(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    old = await create(mem, who, "The user lives in Paris.")
    doomed = await create(mem, who, "The user has a cat named Tom.")
    same = await create(mem, who, "The user is vegetarian.")
    operation = await new_operation(mem, who, "moved to Lyon", "cat died", "vegetarian")
    extracted = [
        memory_pb2.ExtractedFact(fact="The user moved to Lyon.", source_event_ids=["e1"]),
        memory_pb2.ExtractedFact(fact="Tom the cat died.", source_event_ids=["e2"]),
        memory_pb2.ExtractedFact(fact="The user is vegetarian.", source_event_ids=["e3"]),
        memory_pb2.ExtractedFact(fact="The user plays chess.", source_event_ids=["e4"]),
    ]
    request = apply_request(
        tenant,
        operation,
        action("UPDATE", old.id, "The user lives in Lyon.", fact_indexes=[0], reason="moved"),
        action("DELETE", doomed.id, fact_indexes=[1], reason="the cat died"),
        action("NOOP", same.id, fact_indexes=[2]),
        action("CREATE", fact="The user plays chess.", topic="USER_PREFERENCES", fact_indexes=[3]),
        extracted_facts=extracted,
        source_session_id="s-1",
        usage=common_pb2.TokenUsage(prompt_tokens=100, completion_tokens=20, total_tokens=120),
    )

    first = await jobs.ApplyGeneration(request, metadata=who)
    second = await jobs.ApplyGeneration(request, metadata=who)
    # Once applied, the operation's result is the answer, even to a request refused otherwise.
    refused_otherwise = await jobs.ApplyGeneration(
        apply_request(tenant, operation, action("BOGUS")), metadata=who
    )

    assert second == first
    assert refused_otherwise == first
    assert (first.memories_created, first.memories_updated, first.memories_deleted) == (1, 1, 1)
    assert first.memories_unchanged == 1
    assert [g.action for g in first.generated_memories] == ["UPDATED", "DELETED", "CREATED"]
    assert await facts_of(mem, who) == [
        "The user is vegetarian.",
        "The user lives in Lyon.",
        "The user plays chess.",
    ]
    # Searchable as soon as the call returned.
    hits = await search(mem, who, "chess")
    assert hits[0].memory.fact == "The user plays chess."
    created = next(g.memory for g in first.generated_memories if g.action == "CREATED")
    assert list(created.source_event_ids) == ["e4"]
    assert created.source_session_id == "s-1"
    revisions = await mem.ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(memory_id=old.id), metadata=who
    )
    assert [r.action for r in revisions.revisions] == ["UPDATED", "CREATED"]
    latest = revisions.revisions[0]
    assert latest.operation_name == operation
    assert latest.fact == "The user lives in Lyon."
    assert list(latest.extracted_memories) == [f.fact for f in extracted]
    assert list(latest.source_event_ids) == ["e1"]
    assert latest.reason == "moved"
    deleted = await mem.ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(memory_id=doomed.id), metadata=who
    )
    assert [r.action for r in deleted.revisions] == ["DELETED", "CREATED"]
    done = await get_op(ops, who, operation)
    assert done.done
    assert unpack_response(done) == first
    metadata = unpack_metadata(done)
    assert metadata.state == "done"
    assert (metadata.memories_created, metadata.memories_updated) == (1, 1)
    assert (metadata.memories_deleted, metadata.memories_unchanged) == (1, 1)
    assert metadata.extracted_count == 4
    assert metadata.usage.total_tokens == 120
    assert metadata.HasField("completed_at")


async def test_concurrent_applies_of_one_operation_apply_once(
    mem: MemStub, jobs: JobStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)
    request = apply_request(tenant, operation, action("CREATE", fact="The user speaks Portuguese."))

    replies = await asyncio.gather(*(jobs.ApplyGeneration(request, metadata=who) for _ in range(6)))

    assert all(reply == replies[0] for reply in replies)
    assert await facts_of(mem, who) == ["The user speaks Portuguese."]
    memory_id = replies[0].generated_memories[0].memory.id
    revisions = await mem.ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(memory_id=memory_id), metadata=who
    )
    assert len(revisions.revisions) == 1


async def test_actions_outside_the_candidates_are_rejected_and_nothing_applies(
    mem: MemStub,
    jobs: JobStub,
    ops: operations_pb2_grpc.OperationsStub,
    who: Metadata,
    tenant: str,
    gen_channel: Any,
) -> None:
    mine = await create(mem, who, "The user likes jazz.")
    other_scope = await create(mem, who, "The user likes rock.", scope={"user_id": "u2"})
    banks = memory_service_pb2_grpc.MemoryBankServiceStub(gen_channel)
    await banks.CreateMemoryBank(
        memory_service_pb2.CreateMemoryBankRequest(
            memory_bank=memory_pb2.MemoryBank(), memory_bank_id="side"
        ),
        metadata=who,
    )
    other_bank = await create(mem, who, "The user likes pop.", bank_id="side")
    foreign = await create(mem, bearer(f"f-{uuid.uuid4().hex[:8]}"), "Another tenant's fact.")
    deleted = await create(mem, who, "The user likes metal.")
    await mem.DeleteMemory(memory_service_pb2.DeleteMemoryRequest(id=deleted.id), metadata=who)
    operation = await new_operation(mem, who)
    before = await facts_of(mem, who)

    for label, bad in (
        ("hallucinated", action("DELETE", str(uuid.uuid4()))),
        ("not a uuid", action("UPDATE", "mem-42", "x")),
        ("other scope", action("DELETE", other_scope.id)),
        ("other bank", action("UPDATE", other_bank.id, "x")),
        ("other tenant", action("DELETE", foreign.id)),
        ("deleted", action("NOOP", deleted.id)),
        ("unknown action", action("MERGE", mine.id)),
    ):
        request = apply_request(
            tenant,
            operation,
            action("CREATE", fact="The user plays golf."),
            action("UPDATE", mine.id, "The user loves jazz."),
            bad,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await jobs.ApplyGeneration(request, metadata=who)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert field_of(info.value).startswith("actions[2]"), label
        assert await facts_of(mem, who) == before, label
        assert not (await get_op(ops, who, operation)).done, label
    fetched = await mem.GetMemory(memory_service_pb2.GetMemoryRequest(id=mine.id), metadata=who)
    assert fetched.revision_count == 1
    # The scope must be the operation's.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.ApplyGeneration(
            apply_request(tenant, operation, scope={"user_id": "u2"}), metadata=who
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == "scope"


async def test_ttl_comes_from_the_request_else_the_bank(
    mem: MemStub, jobs: JobStub, who: Metadata, tenant: str, gen_channel: Any
) -> None:
    banks = memory_service_pb2_grpc.MemoryBankServiceStub(gen_channel)
    await banks.CreateMemoryBank(
        memory_service_pb2.CreateMemoryBankRequest(
            memory_bank=memory_pb2.MemoryBank(
                ttl_config=memory_pb2.TtlConfig(
                    generate_created_ttl=duration_pb2.Duration(seconds=3600)
                )
            ),
            memory_bank_id="short",
        ),
        metadata=who,
    )
    op_bank = await new_operation(mem, who, bank_id="short")
    op_request = await new_operation(mem, who, bank_id="short")
    start = datetime.now(UTC)

    by_bank = await jobs.ApplyGeneration(
        apply_request(tenant, op_bank, action("CREATE", fact="one"), bank_id="short"),
        metadata=who,
    )
    by_request = await jobs.ApplyGeneration(
        apply_request(
            tenant,
            op_request,
            action("CREATE", fact="two"),
            bank_id="short",
            config=gp.GenerationConfig(ttl=duration_pb2.Duration(seconds=60)),
        ),
        metadata=who,
    )

    def expiry(reply: Any) -> timedelta:
        expires: datetime = reply.generated_memories[0].memory.expires_at.ToDatetime(tzinfo=UTC)
        return expires - start

    assert timedelta(minutes=59) < expiry(by_bank) <= timedelta(minutes=61)
    assert timedelta(seconds=50) < expiry(by_request) <= timedelta(seconds=70)


# -------------------------------------------------------------------------------- watermarks


async def test_watermark_compare_and_set(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    session_id = str(uuid.uuid4())
    mark = jb.GetGenerationWatermarkRequest(tenant_id=tenant, session_id=session_id, scope=SCOPE)
    empty = await jobs.GetGenerationWatermark(mark, metadata=who)
    assert empty.session_id == session_id
    assert empty.event_id == ""
    first = await new_operation(mem, who)
    racer = await new_operation(mem, who)
    later = await new_operation(mem, who)

    await jobs.ApplyGeneration(
        apply_request(
            tenant,
            first,
            action("CREATE", fact="first"),
            source_session_id=session_id,
            watermark_event_id="e5",
        ),
        metadata=who,
    )
    moved = await jobs.GetGenerationWatermark(mark, metadata=who)
    assert (moved.event_id, moved.operation_name) == ("e5", first)
    # A job that read the watermark before `first` applied loses, and applies nothing.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.ApplyGeneration(
            apply_request(
                tenant,
                racer,
                action("CREATE", fact="duplicate of first"),
                source_session_id=session_id,
                watermark_event_id="e5",
            ),
            metadata=who,
        )
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "e5" in (info.value.details() or "")
    assert reason_of(info.value) == "WATERMARK_MOVED"
    assert await facts_of(mem, who) == ["first"]
    assert not (await get_op(ops, who, racer)).done
    # Another scope of the same session has its own watermark.
    other_scope = await jobs.GetGenerationWatermark(
        jb.GetGenerationWatermarkRequest(
            tenant_id=tenant, session_id=session_id, scope={"user_id": "u2"}
        ),
        metadata=who,
    )
    assert other_scope.event_id == ""
    await jobs.ApplyGeneration(
        apply_request(
            tenant,
            later,
            action("CREATE", fact="later"),
            source_session_id=session_id,
            watermark_event_id="e9",
            expected_watermark_event_id="e5",
        ),
        metadata=who,
    )
    assert (await jobs.GetGenerationWatermark(mark, metadata=who)).event_id == "e9"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.ApplyGeneration(
            apply_request(
                tenant,
                racer,
                action("CREATE", fact="stale"),
                source_session_id=session_id,
                watermark_event_id="e7",
                expected_watermark_event_id="e5",
            ),
            metadata=who,
        )
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "e9" in (info.value.details() or "")


# ----------------------------------------------------------------------------- job start


async def test_start_reports_the_first_state_with_bank_and_watermark(
    mem: MemStub,
    jobs: JobStub,
    ops: operations_pb2_grpc.OperationsStub,
    who: Metadata,
    tenant: str,
    gen_server: GenServer,
) -> None:
    session = await new_session(gen_server.sessions, who, user_id="u1")
    generate = gp.GenerateMemoriesRequest(
        source_type="session",
        source_reference=session.id,
        config=gp.GenerationConfig(model="openai/scripted"),
    )
    first = str((await mem.GenerateMemories(generate, metadata=who)).name)
    start = jb.StartGenerationJobRequest(
        operation_name=first, tenant_id=tenant, state="extracting", attempt=2
    )

    started = await jobs.StartGenerationJob(start, metadata=who)

    assert not started.operation.done
    assert (
        unpack_metadata(started.operation).state,
        unpack_metadata(started.operation).attempt,
    ) == ("extracting", 2)
    assert unpack_metadata(await get_op(ops, who, first)).state == "extracting"
    assert started.bank.id == "default"
    assert list(started.bank.scope_keys) == list(
        (await jobs.GetJobBank(jb.GetJobBankRequest(tenant_id=tenant), metadata=who)).scope_keys
    )
    assert started.HasField("watermark")
    assert (started.watermark.session_id, started.watermark.event_id) == (session.id, "")
    # The watermark is the one of the operation's bank, session and scope.
    await jobs.ApplyGeneration(
        apply_request(
            tenant,
            first,
            action("CREATE", fact="The user likes tea."),
            source_session_id=session.id,
            watermark_event_id="e3",
        ),
        metadata=who,
    )
    second = str((await mem.GenerateMemories(generate, metadata=who)).name)
    again = await jobs.StartGenerationJob(
        jb.StartGenerationJobRequest(operation_name=second, tenant_id=tenant, state="extracting"),
        metadata=who,
    )
    assert (again.watermark.event_id, again.watermark.operation_name) == ("e3", first)
    # A finished operation: only the operation, and the job must stop.
    over = await jobs.StartGenerationJob(start, metadata=who)
    assert over.operation.done
    assert not over.HasField("bank")
    assert not over.HasField("watermark")


async def test_start_of_inline_facts_has_no_watermark_and_a_cancelled_one_is_over(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)
    start = jb.StartGenerationJobRequest(
        operation_name=operation, tenant_id=tenant, state="consolidating"
    )
    started = await jobs.StartGenerationJob(start, metadata=who)
    assert unpack_metadata(started.operation).state == "consolidating"
    assert started.bank.id == "default"
    assert not started.HasField("watermark")

    cancelled = await new_operation(mem, who)
    await jobs.ReportOperationProgress(
        jb.ReportOperationProgressRequest(
            operation_name=cancelled, tenant_id=tenant, state="extracting"
        ),
        metadata=who,
    )
    await ops.CancelOperation(operations_pb2.CancelOperationRequest(name=cancelled), metadata=who)
    over = await jobs.StartGenerationJob(
        jb.StartGenerationJobRequest(
            operation_name=cancelled, tenant_id=tenant, state="consolidating"
        ),
        metadata=who,
    )
    assert over.operation.done
    assert over.operation.error.code == code_pb2.CANCELLED
    assert not over.HasField("bank")


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"state": "applying"}, grpc.StatusCode.INVALID_ARGUMENT, "state"),
        ({"state": ""}, grpc.StatusCode.INVALID_ARGUMENT, "state"),
        ({"operation_name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "operation_name"),
        ({"operation_name": "operations/nope"}, grpc.StatusCode.NOT_FOUND, None),
        ({"operation_name": f"operations/{uuid.uuid4()}"}, grpc.StatusCode.NOT_FOUND, None),
    ],
)
async def test_bad_starts(
    mem: MemStub,
    jobs: JobStub,
    ops: operations_pb2_grpc.OperationsStub,
    who: Metadata,
    tenant: str,
    fields: dict[str, str],
    code: grpc.StatusCode,
    field: str | None,
) -> None:
    operation = await new_operation(mem, who)
    request = jb.StartGenerationJobRequest(
        operation_name=operation, tenant_id=tenant, state="consolidating"
    )
    for key, value in fields.items():
        setattr(request, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.StartGenerationJob(request, metadata=who)
    assert info.value.code() == code
    if field is not None:
        assert field_of(info.value) == field
    assert unpack_metadata(await get_op(ops, who, operation)).state == "queued"


# ---------------------------------------------------------------------------------- progress


async def report(
    jobs: JobStub, who: Metadata, tenant: str, operation: str, state: str, **fields: Any
) -> Any:
    return await jobs.ReportOperationProgress(
        jb.ReportOperationProgressRequest(
            operation_name=operation, tenant_id=tenant, state=state, **fields
        ),
        metadata=who,
    )


async def test_progress_moves_forward_only_and_is_ignored_after_done(
    mem: MemStub, jobs: JobStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)

    extracting = await report(
        jobs, who, tenant, operation, "extracting", attempt=1, extracted_count=0
    )
    consolidating = await report(
        jobs,
        who,
        tenant,
        operation,
        "consolidating",
        attempt=1,
        extracted_count=3,
        usage=common_pb2.TokenUsage(total_tokens=50, calls=1),
    )
    # A redelivery starts over: the state stays, the attempt is recorded.
    redelivered = await report(jobs, who, tenant, operation, "extracting", attempt=2)
    failed = await report(
        jobs,
        who,
        tenant,
        operation,
        "failed",
        attempt=2,
        error=status_pb2.Status(code=code_pb2.INTERNAL, message="model kept hallucinating"),
    )
    after = await report(jobs, who, tenant, operation, "applying", attempt=3)

    assert unpack_metadata(extracting).state == "extracting"
    assert unpack_metadata(extracting).attempt == 1
    metadata = unpack_metadata(consolidating)
    assert (metadata.state, metadata.extracted_count, metadata.usage.total_tokens) == (
        "consolidating",
        3,
        50,
    )
    assert unpack_metadata(redelivered).state == "consolidating"
    assert unpack_metadata(redelivered).attempt == 2
    assert failed.done
    assert failed.error.code == code_pb2.INTERNAL
    assert failed.error.message == "model kept hallucinating"
    assert unpack_metadata(failed).state == "failed"
    assert after == failed
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.ApplyGeneration(
            apply_request(tenant, operation, action("CREATE", fact="late")), metadata=who
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await facts_of(mem, who) == []


async def test_a_report_after_the_apply_returns_the_finished_operation(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    """The service keeps the row its last report wrote; an apply since then is not missed."""
    operation = await new_operation(mem, who)
    await report(jobs, who, tenant, operation, "extracting", attempt=1)
    await report(jobs, who, tenant, operation, "consolidating", attempt=1, extracted_count=1)
    applied = await jobs.ApplyGeneration(
        apply_request(tenant, operation, action("CREATE", fact="The user plays chess.")),
        metadata=who,
    )

    late = await report(jobs, who, tenant, operation, "applying", attempt=1)

    assert late.done
    assert unpack_metadata(late).state == "done"
    assert unpack_response(late) == applied
    assert late == await get_op(ops, who, operation)


async def test_dry_run_ends_with_the_reported_plan_and_cannot_apply(
    mem: MemStub, jobs: JobStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who, config=gp.GenerationConfig(dry_run=True))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.ApplyGeneration(
            apply_request(tenant, operation, action("CREATE", fact="x")), metadata=who
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    plan = gp.GenerateMemoriesResponse(
        planned_actions=[action("CREATE", fact="The user plays chess.")]
    )

    done = await report(jobs, who, tenant, operation, "done", response=plan)

    assert done.done
    assert unpack_response(done) == plan
    assert unpack_metadata(done).dry_run
    assert await facts_of(mem, who) == []


async def test_bad_progress_reports(
    mem: MemStub, jobs: JobStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)
    for state in ("", "queued", "sleeping"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await report(jobs, who, tenant, operation, state)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(info.value) == "state"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await report(jobs, who, tenant, f"operations/{uuid.uuid4()}", "extracting")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------------ cross-tenant


@pytest.mark.parametrize(
    "rpc",
    [
        "StartGenerationJob",
        "GetJobBank",
        "FindSimilarMemories",
        "ApplyGeneration",
        "GetGenerationWatermark",
        "ReportOperationProgress",
    ],
)
async def test_job_service_acts_only_for_the_credential_tenant(
    mem: MemStub,
    jobs: JobStub,
    ops: operations_pb2_grpc.OperationsStub,
    who: Metadata,
    tenant: str,
    rpc: str,
) -> None:
    operation = await new_operation(mem, who)
    await create(mem, who, "The tenant's secret.")
    intruder = bearer(f"intruder-{uuid.uuid4().hex[:8]}")
    requests: dict[str, Any] = {
        "StartGenerationJob": jb.StartGenerationJobRequest(
            operation_name=operation, tenant_id=tenant, state="consolidating"
        ),
        "GetJobBank": jb.GetJobBankRequest(tenant_id=tenant),
        "FindSimilarMemories": jb.FindSimilarMemoriesRequest(
            tenant_id=tenant, scope=SCOPE, facts=[memory_pb2.ExtractedFact(fact="secret")]
        ),
        "ApplyGeneration": apply_request(tenant, operation, action("CREATE", fact="planted")),
        "GetGenerationWatermark": jb.GetGenerationWatermarkRequest(
            tenant_id=tenant, session_id="s", scope=SCOPE
        ),
        "ReportOperationProgress": jb.ReportOperationProgressRequest(
            operation_name=operation, tenant_id=tenant, state="failed"
        ),
    }
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(jobs, rpc)(requests[rpc], metadata=intruder)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Without ADMIN, not even the own tenant.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(jobs, rpc)(requests[rpc], metadata=bearer(tenant, "MEMORY_WRITE"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await facts_of(mem, who) == ["The tenant's secret."]
    assert not (await get_op(ops, who, operation)).done


async def test_concurrent_reports_keep_the_furthest_state(
    mem: MemStub, jobs: JobStub, ops: operations_pb2_grpc.OperationsStub, who: Metadata, tenant: str
) -> None:
    operation = await new_operation(mem, who)
    states = ["extracting", "consolidating", "applying"] * 5

    replies = await asyncio.gather(
        *(
            report(jobs, who, tenant, operation, state, attempt=i % 3 + 1)
            for i, state in enumerate(states)
        )
    )

    assert all(not reply.done for reply in replies)
    final = unpack_metadata(await get_op(ops, who, operation))
    assert final.state == "applying"
    assert final.attempt == 3
