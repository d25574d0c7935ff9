"""LearnFromTrajectories at request time, and the internal ProceduralJobService the worker
calls: no model is FAILED_PRECONDITION, bad requests name their field, evidence outside the
tenant's scope is refused, completing twice stores nothing twice. (The whole pipeline with the
worker and the scripted model: test_learning_pipeline.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc

from contextiq.procedural.v1 import (
    procedural_job_service_pb2,
    procedural_job_service_pb2_grpc,
    procedural_pb2,
    procedural_service_pb2,
)
from tests.auth_helpers import bearer
from tests.integration.memory.conftest import field_of, reason_of
from tests.integration.procedural.conftest import (
    Stub,
    Who,
    create_trajectory,
    create_workflow,
    pb,
)

jpb = procedural_job_service_pb2
SCOPE = {"user_id": "u1"}


async def learn(stub: Stub, who: Who, **fields: Any) -> operations_pb2.Operation:
    fields.setdefault("scope", SCOPE)
    operation: operations_pb2.Operation = await stub.LearnFromTrajectories(
        pb.LearnFromTrajectoriesRequest(**fields), metadata=who
    )
    return operation


async def test_no_model_is_a_failed_precondition(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    await create_trajectory(stub, who, scope=SCOPE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await learn(stub, who)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CONTEXTIQ_LLM_MODEL" in (info.value.details() or "")
    assert reason_of(info.value) == "LLM_NOT_CONFIGURED"


async def test_bad_requests(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    for fields, field in (
        ({"max_candidates": 51}, "max_candidates"),
        ({"scope": {"user_id": ""}}, "scope"),
        ({"trajectory_ids": [""]}, "trajectory_ids[0]"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await learn(stub, who, model="openai/x", **fields)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(info.value) == field
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await learn(stub, who, model="openai/x")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(info.value) == "NO_TRAJECTORIES"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await learn(
            stub, who, model="openai/x", trajectory_ids=["00000000-0000-0000-0000-000000000000"]
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_accepted_request_is_a_queued_operation(
    stub: Stub, channel: grpc.aio.Channel, auth: Callable[..., Who]
) -> None:
    who = auth()
    await create_trajectory(stub, who, scope=SCOPE)
    first = await learn(stub, who, model="openai/x", request_id="learn-1")
    again = await learn(stub, who, model="openai/x", request_id="learn-1")
    assert again.name == first.name
    assert not first.done
    metadata = pb.LearnFromTrajectoriesMetadata()
    assert first.metadata.Unpack(metadata)
    assert metadata.state == "queued"
    assert metadata.trajectory_count == 1
    fetched = await operations_pb2_grpc.OperationsStub(channel).GetOperation(
        operations_pb2.GetOperationRequest(name=first.name), metadata=who
    )
    assert fetched.name == first.name


def _proposal(evidence: list[str], **fields: Any) -> procedural_pb2.SkillCandidate:
    fields.setdefault("kind", "skill")
    fields.setdefault("name", "Compare fares")
    fields.setdefault("skill_type", "reasoning_pattern")
    fields.setdefault("implementation", "search two sites, book the cheaper")
    fields.setdefault("confidence", 0.7)
    return procedural_pb2.SkillCandidate(evidence_trajectory_ids=evidence, **fields)


async def test_job_service_validates_and_completes_once(
    stub: Stub, channel: grpc.aio.Channel, tenant: str, auth: Callable[..., Who]
) -> None:
    who = auth()
    jobs = procedural_job_service_pb2_grpc.ProceduralJobServiceStub(channel)
    mine = await create_trajectory(stub, who, scope=SCOPE)
    elsewhere = await create_trajectory(stub, who, scope={"user_id": "u2"})
    workflow = await create_workflow(stub, who, scope=SCOPE)
    other_tenant = await create_trajectory(stub, bearer("other-" + tenant), scope=SCOPE)
    operation = await learn(stub, who, model="openai/x")

    found = await jobs.GetLearningInput(
        jpb.GetLearningInputRequest(operation_name=operation.name, tenant_id=tenant),
        metadata=who,
    )
    assert [t.id for t in found.trajectories] == [mine.id]
    assert [w.id for w in found.workflows] == [workflow.id]
    assert found.request.model == "openai/x"

    async def complete(*proposals: procedural_pb2.SkillCandidate) -> Any:
        return await jobs.CompleteLearning(
            jpb.CompleteLearningRequest(
                operation_name=operation.name, tenant_id=tenant, proposals=proposals
            ),
            metadata=who,
        )

    for evidence, field in (
        ([elsewhere.id], "proposals[0].evidence_trajectory_ids"),
        ([other_tenant.id], "proposals[0].evidence_trajectory_ids"),
        ([], "proposals[0].evidence_trajectory_ids"),
        (["not-an-id"], "proposals[0].evidence_trajectory_ids[0]"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await complete(_proposal(evidence))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(info.value) == field
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await complete(_proposal([mine.id], skill_type="magic"))
    assert field_of(info.value) == "proposals[0].skill_type"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await complete(_proposal([mine.id], kind="workflow_update", target_workflow_id=mine.id))
    assert field_of(info.value) == "proposals[0].target_workflow_id"
    listed = await stub.ListSkillCandidates(pb.ListSkillCandidatesRequest(), metadata=who)
    assert not listed.candidates

    update = _proposal(
        [mine.id],
        kind="workflow_update",
        target_workflow_id=workflow.id,
        skill_type="",
        implementation="",
        proposed_steps=[procedural_pb2.WorkflowStep(action="check the visa first")],
    )
    first = await complete(_proposal([mine.id]), update)
    again = await complete(_proposal([mine.id]))
    assert [c.id for c in again.candidates] == [c.id for c in first.candidates]
    assert [c.kind for c in first.candidates] == ["skill", "workflow_update"]
    assert all(list(c.evidence_trajectory_ids) == [mine.id] for c in first.candidates)
    assert all(c.operation_name == operation.name for c in first.candidates)
    done = await operations_pb2_grpc.OperationsStub(channel).GetOperation(
        operations_pb2.GetOperationRequest(name=operation.name), metadata=who
    )
    assert done.done
    response = procedural_service_pb2.LearnFromTrajectoriesResponse()
    assert done.response.Unpack(response)
    assert [c.id for c in response.candidates] == [c.id for c in first.candidates]
    listed = await stub.ListSkillCandidates(
        pb.ListSkillCandidatesRequest(filter=f'operation_name = "{operation.name}"'), metadata=who
    )
    assert len(listed.candidates) == 2


async def test_job_service_acts_only_for_the_credentials_tenant(
    stub: Stub, channel: grpc.aio.Channel, tenant: str, auth: Callable[..., Who]
) -> None:
    who = auth()
    await create_trajectory(stub, who, scope=SCOPE)
    operation = await learn(stub, who, model="openai/x")
    jobs = procedural_job_service_pb2_grpc.ProceduralJobServiceStub(channel)
    request = jpb.GetLearningInputRequest(operation_name=operation.name, tenant_id=tenant)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.GetLearningInput(request, metadata=bearer("intruder"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.GetLearningInput(
            jpb.GetLearningInputRequest(operation_name=operation.name, tenant_id="intruder"),
            metadata=bearer("intruder"),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.GetLearningInput(request, metadata=auth("PROCEDURAL_WRITE"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_failure_report_ends_the_operation(
    stub: Stub, channel: grpc.aio.Channel, tenant: str, auth: Callable[..., Who]
) -> None:
    who = auth()
    await create_trajectory(stub, who, scope=SCOPE)
    operation = await learn(stub, who, model="openai/x")
    jobs = procedural_job_service_pb2_grpc.ProceduralJobServiceStub(channel)
    progress = await jobs.ReportLearningProgress(
        jpb.ReportLearningProgressRequest(
            operation_name=operation.name, tenant_id=tenant, state="learning"
        ),
        metadata=who,
    )
    metadata = pb.LearnFromTrajectoriesMetadata()
    assert progress.metadata.Unpack(metadata)
    assert metadata.state == "learning"
    from google.rpc import status_pb2

    failed = await jobs.ReportLearningProgress(
        jpb.ReportLearningProgressRequest(
            operation_name=operation.name,
            tenant_id=tenant,
            state="failed",
            error=status_pb2.Status(code=14, message="the model kept failing"),
        ),
        metadata=who,
    )
    assert failed.done
    assert failed.error.message == "the model kept failing"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await jobs.CompleteLearning(
            jpb.CompleteLearningRequest(operation_name=operation.name, tenant_id=tenant),
            metadata=who,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
