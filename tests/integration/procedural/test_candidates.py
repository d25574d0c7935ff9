"""Skill candidates: listed, read, promoted into a skill (keeping their evidence and pointing at
the skill) or into a workflow's new steps, or rejected -- each exactly once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from contextiq.procedural.v1 import procedural_pb2
from memory_svc.procedural.candidates import Proposal
from tests.integration.memory.conftest import MemoryServer, field_of
from tests.integration.procedural.conftest import Stub, Who, create_trajectory, create_workflow, pb


def proposal(**fields: Any) -> Proposal:
    values: dict[str, Any] = {
        "kind": "skill",
        "name": "Compare fares first",
        "description": "Search at least two fare sites before booking.",
        "skill_type": "reasoning_pattern",
        "implementation": "1. search site A 2. search site B 3. book the cheaper",
        "target_workflow_id": "",
        "proposed_steps": [],
        "learning_points": ["cheapest fares differ by site"],
        "evidence_trajectory_ids": [],
        "rationale": "both successful runs compared fares",
        "confidence": 0.8,
    }
    values.update(fields)
    return Proposal(**values)


async def store(
    server: MemoryServer, tenant: str, proposals: list[Proposal], operation: str = ""
) -> list[procedural_pb2.SkillCandidate]:
    parts = server.parts.procedural
    assert parts is not None
    return await parts.candidates.store_proposals(
        tenant,
        operation_name=operation or "operations/test",
        scope={"user_id": "u1"},
        proposals=proposals,
    )


async def test_promote_creates_a_skill_and_keeps_the_evidence(
    stub: Stub, auth: Callable[..., Who], tenant: str, procedural_server: MemoryServer
) -> None:
    who = auth()
    run = await create_trajectory(stub, who, scope={"user_id": "u1"})
    (candidate,) = await store(
        procedural_server, tenant, [proposal(evidence_trajectory_ids=[run.id])]
    )
    assert candidate.state == "proposed"
    listed = await stub.ListSkillCandidates(pb.ListSkillCandidatesRequest(), metadata=who)
    assert [c.id for c in listed.candidates] == [candidate.id]
    promoted = await stub.PromoteSkillCandidate(
        pb.PromoteSkillCandidateRequest(
            id=candidate.id, skill_override=procedural_pb2.Skill(name="Compare fares")
        ),
        metadata=who,
    )
    assert promoted.state == "promoted"
    assert list(promoted.evidence_trajectory_ids) == [run.id]
    skill = await stub.GetSkill(pb.GetSkillRequest(id=promoted.promoted_skill_id), metadata=who)
    assert skill.name == "Compare fares"
    assert skill.skill_type == "reasoning_pattern"
    assert skill.source_candidate_id == candidate.id
    assert dict(skill.scope) == {"user_id": "u1"}
    assert list(skill.metadata["evidence_trajectory_ids"]) == [run.id]
    assert skill.version == 1
    fetched = await stub.GetSkillCandidate(
        pb.GetSkillCandidateRequest(id=candidate.id), metadata=who
    )
    assert fetched == promoted
    # Promoted once only; a promoted candidate cannot be rejected either.
    for call in (
        stub.PromoteSkillCandidate(pb.PromoteSkillCandidateRequest(id=candidate.id), metadata=who),
        stub.RejectSkillCandidate(pb.RejectSkillCandidateRequest(id=candidate.id), metadata=who),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    skills = await stub.ListSkills(pb.ListSkillsRequest(), metadata=who)
    assert [s.id for s in skills.skills] == [skill.id]
    # The new skill is searchable at once.
    found = await stub.SearchProcedural(
        pb.SearchProceduralRequest(search_query="compare fares", kinds=["skill"]), metadata=who
    )
    assert found.results[0].skill.id == skill.id


async def test_bad_override_is_rejected_and_nothing_changes(
    stub: Stub, auth: Callable[..., Who], tenant: str, procedural_server: MemoryServer
) -> None:
    who = auth()
    (candidate,) = await store(procedural_server, tenant, [proposal()])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PromoteSkillCandidate(
            pb.PromoteSkillCandidateRequest(
                id=candidate.id, skill_override=procedural_pb2.Skill(skill_type="magic")
            ),
            metadata=who,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == "skill_override.skill_type"
    still = await stub.GetSkillCandidate(pb.GetSkillCandidateRequest(id=candidate.id), metadata=who)
    assert still.state == "proposed"
    assert not (await stub.ListSkills(pb.ListSkillsRequest(), metadata=who)).skills


async def test_learning_points_promote_to_a_reasoning_pattern(
    stub: Stub, auth: Callable[..., Who], tenant: str, procedural_server: MemoryServer
) -> None:
    who = auth()
    (candidate,) = await store(
        procedural_server,
        tenant,
        [
            proposal(
                kind="learning_point",
                name="Check visa rules",
                skill_type="",
                implementation="",
                learning_points=["check visa rules before booking"],
            )
        ],
    )
    promoted = await stub.PromoteSkillCandidate(
        pb.PromoteSkillCandidateRequest(id=candidate.id), metadata=who
    )
    skill = await stub.GetSkill(pb.GetSkillRequest(id=promoted.promoted_skill_id), metadata=who)
    assert skill.skill_type == "reasoning_pattern"
    assert "check visa rules before booking" in skill.implementation


async def test_workflow_update_promotion_replaces_the_steps(
    stub: Stub, auth: Callable[..., Who], tenant: str, procedural_server: MemoryServer
) -> None:
    who = auth()
    target = await create_workflow(stub, who)
    steps = [{"order": 1, "action": "run the smoke tests"}, {"order": 2, "action": "deploy"}]
    (candidate,) = await store(
        procedural_server,
        tenant,
        [proposal(kind="workflow_update", target_workflow_id=target.id, proposed_steps=steps)],
    )
    promoted = await stub.PromoteSkillCandidate(
        pb.PromoteSkillCandidateRequest(id=candidate.id), metadata=who
    )
    assert promoted.state == "promoted"
    updated = await stub.GetWorkflow(pb.GetWorkflowRequest(id=target.id), metadata=who)
    assert [s.action for s in updated.steps] == ["run the smoke tests", "deploy"]


async def test_reject_and_filters(
    stub: Stub, auth: Callable[..., Who], tenant: str, procedural_server: MemoryServer
) -> None:
    who = auth()
    first, second = await store(
        procedural_server, tenant, [proposal(), proposal(kind="learning_point")], "operations/x"
    )
    rejected = await stub.RejectSkillCandidate(
        pb.RejectSkillCandidateRequest(id=first.id, reason="too vague"), metadata=who
    )
    assert rejected.state == "rejected"

    async def listed(filter_text: str) -> list[str]:
        response = await stub.ListSkillCandidates(
            pb.ListSkillCandidatesRequest(filter=filter_text), metadata=who
        )
        return [c.id for c in response.candidates]

    assert await listed('state = "proposed"') == [second.id]
    assert await listed('kind = "skill"') == [first.id]
    assert set(await listed('operation_name = "operations/x"')) == {first.id, second.id}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await listed("confidence > 0.5")
    assert field_of(info.value) == "filter"


async def test_storing_an_operations_proposals_twice_stores_them_once(
    stub: Stub, auth: Callable[..., Who], tenant: str, procedural_server: MemoryServer
) -> None:
    first = await store(procedural_server, tenant, [proposal(), proposal(name="b")], "operations/y")
    again = await store(procedural_server, tenant, [proposal(), proposal(name="b")], "operations/y")
    assert [c.id for c in again] == [c.id for c in first]
    listed = await stub.ListSkillCandidates(pb.ListSkillCandidatesRequest(), metadata=auth())
    assert len(listed.candidates) == 2
