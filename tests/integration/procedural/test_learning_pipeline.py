"""Learning from trajectories end to end: the memory service's operation and outbox, the
relay, JetStream, the extraction worker and the real LiteLLM path against the scripted model
server. Proposals become candidates with their evidence; hallucinated evidence is asked again
and never stored; a model that keeps failing ends the operation with a clear error."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ciq_runtime.embedded import EmbeddedNats
from contextiq.procedural.v1 import procedural_pb2, procedural_service_pb2_grpc
from tests.auth_helpers import bearer
from tests.integration.extraction.pipeline import Pipeline, fresh_database, running_pipeline
from tests.integration.procedural.conftest import (
    Stub,
    create_trajectory,
    create_workflow,
    pb,
)
from tests.llm_server import Reply, ScriptedLLM

SCOPE = {"team": "travel"}


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


@pytest.fixture(scope="module")
async def pipeline(
    pg_url: str, pg_dsn: str, service_tmp_path: Path, llm: ScriptedLLM
) -> AsyncIterator[Pipeline]:
    nats = EmbeddedNats(store_dir=service_tmp_path / f"nats-learn-{uuid.uuid4().hex[:8]}")
    await nats.start()
    try:
        db = await fresh_database(pg_url, pg_dsn)
        async with running_pipeline(
            db,
            nats.url,
            llm,
            worker_ack_wait_s=5.0,
            worker_backoff_s=(5.0,),
            worker_max_deliver=3,
        ) as running:
            yield running
    finally:
        await nats.stop()


@pytest.fixture
def tenant() -> str:
    return f"learn-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def stub(pipeline: Pipeline) -> Stub:
    return procedural_service_pb2_grpc.ProceduralServiceStub(pipeline.channel(pipeline.memory_addr))


def candidate(evidence: list[str], **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kind": "skill",
        "name": "Compare fares on two sites",
        "description": "Search two fare sites before booking.",
        "skill_type": "reasoning_pattern",
        "implementation": "1. search site A 2. search site B 3. book the cheaper",
        "target_workflow_id": "",
        "proposed_steps": [],
        "learning_points": [],
        "evidence_trajectory_ids": evidence,
        "rationale": "the successful run compared fares, the failed one did not",
        "confidence": 0.8,
    }
    values.update(fields)
    return values


async def runs(stub: Stub, tenant: str) -> tuple[procedural_pb2.Trajectory, ...]:
    who = bearer(tenant)
    good = await create_trajectory(
        stub,
        who,
        task="Book a flight to Lisbon",
        scope=SCOPE,
        steps=[
            procedural_pb2.TrajectoryStep(action="search fares on site A", tool_name="fares"),
            procedural_pb2.TrajectoryStep(action="search fares on site B", tool_name="fares"),
            procedural_pb2.TrajectoryStep(action="book the cheaper", observation="booked"),
        ],
    )
    bad = await create_trajectory(
        stub,
        who,
        task="Book a flight to Porto",
        outcome="failure",
        scope=SCOPE,
        learning_points=["the first fare found was 40% dearer"],
    )
    return good, bad


def learning_request(llm: ScriptedLLM, index: int = 0) -> dict[str, Any]:
    requests = [
        body
        for body in llm.requests
        if body.get("response_format", {}).get("json_schema", {}).get("name")
        == "procedural_learning"
    ]
    return requests[index]


async def test_proposals_become_candidates_with_their_evidence(
    pipeline: Pipeline, stub: Stub, tenant: str, llm: ScriptedLLM
) -> None:
    who = bearer(tenant)
    good, bad = await runs(stub, tenant)
    workflow = await create_workflow(stub, who, name="Book travel", scope=SCOPE)
    llm.push(
        Reply.json(
            {
                "candidates": [
                    candidate([good.id, bad.id]),
                    candidate(
                        [good.id],
                        kind="workflow_update",
                        name="Compare before booking",
                        skill_type="",
                        implementation="",
                        target_workflow_id=workflow.id,
                        proposed_steps=[
                            {"action": "search two fare sites", "reasoning": "prices differ"},
                            {"action": "book the cheaper", "reasoning": ""},
                        ],
                    ),
                    candidate(
                        [bad.id],
                        kind="learning_point",
                        name="First fare is rarely the best",
                        skill_type="",
                        implementation="",
                        learning_points=["never book the first fare found"],
                    ),
                ]
            }
        )
    )
    operation = await stub.LearnFromTrajectories(
        pb.LearnFromTrajectoriesRequest(scope=SCOPE, max_candidates=3), metadata=who
    )
    done = await pipeline.wait_done(tenant, operation.name)
    assert not done.HasField("error"), done.error
    response = pb.LearnFromTrajectoriesResponse()
    assert done.response.Unpack(response)
    assert [c.kind for c in response.candidates] == ["skill", "workflow_update", "learning_point"]
    assert list(response.candidates[0].evidence_trajectory_ids) == [good.id, bad.id]
    assert response.usage.prompt_tokens == 100
    metadata = pb.LearnFromTrajectoriesMetadata()
    assert done.metadata.Unpack(metadata)
    assert (metadata.state, metadata.trajectory_count) == ("done", 2)

    # The model saw both runs and the workflow, as data.
    shown = learning_request(llm)["messages"][1]["content"]
    assert good.id in shown
    assert bad.id in shown
    assert workflow.id in shown
    assert "<trajectories>" in shown

    listed = await stub.ListSkillCandidates(
        pb.ListSkillCandidatesRequest(filter='state = "proposed"'), metadata=who
    )
    assert {c.id for c in listed.candidates} == {c.id for c in response.candidates}
    assert all(c.operation_name == operation.name for c in listed.candidates)
    assert all(dict(c.scope) == SCOPE for c in listed.candidates)

    skill_candidate = response.candidates[0]
    promoted = await stub.PromoteSkillCandidate(
        pb.PromoteSkillCandidateRequest(id=skill_candidate.id), metadata=who
    )
    assert list(promoted.evidence_trajectory_ids) == [good.id, bad.id]
    skill = await stub.GetSkill(pb.GetSkillRequest(id=promoted.promoted_skill_id), metadata=who)
    assert skill.source_candidate_id == skill_candidate.id
    assert skill.name == "Compare fares on two sites"
    await stub.PromoteSkillCandidate(
        pb.PromoteSkillCandidateRequest(id=response.candidates[1].id), metadata=who
    )
    updated = await stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow.id), metadata=who)
    assert [s.action for s in updated.steps] == ["search two fare sites", "book the cheaper"]


async def test_hallucinated_evidence_is_asked_again_and_never_stored(
    pipeline: Pipeline, stub: Stub, tenant: str, llm: ScriptedLLM
) -> None:
    who = bearer(tenant)
    good, _ = await runs(stub, tenant)
    # Another tenant's trajectory in the same scope: never shown, never accepted.
    foreign = await create_trajectory(stub, bearer(tenant + "-other"), scope=SCOPE)
    llm.push(
        Reply.json({"candidates": [candidate([foreign.id])]}),
        Reply.json({"candidates": [candidate([good.id])]}),
    )
    operation = await stub.LearnFromTrajectories(
        pb.LearnFromTrajectoriesRequest(scope=SCOPE), metadata=who
    )
    done = await pipeline.wait_done(tenant, operation.name)
    assert not done.HasField("error"), done.error
    assert foreign.id not in learning_request(llm)["messages"][1]["content"]
    retry = learning_request(llm, 1)["messages"]
    assert "evidence_trajectory_ids" in retry[-1]["content"]
    listed = await stub.ListSkillCandidates(pb.ListSkillCandidatesRequest(), metadata=who)
    assert [list(c.evidence_trajectory_ids) for c in listed.candidates] == [[good.id]]


async def test_a_model_that_keeps_failing_ends_the_operation(
    pipeline: Pipeline, stub: Stub, tenant: str, llm: ScriptedLLM
) -> None:
    who = bearer(tenant)
    await runs(stub, tenant)
    llm.push(
        Reply.json({"candidates": [candidate(["made-up"])]}),
        Reply.json({"candidates": [candidate(["made-up"])]}),
    )
    operation = await stub.LearnFromTrajectories(
        pb.LearnFromTrajectoriesRequest(scope=SCOPE), metadata=who
    )
    done = await pipeline.wait_done(tenant, operation.name)
    assert done.HasField("error")
    assert "invalid output" in done.error.message
    listed = await stub.ListSkillCandidates(pb.ListSkillCandidatesRequest(), metadata=who)
    assert not listed.candidates


async def test_only_the_named_trajectories_and_agent(
    pipeline: Pipeline, stub: Stub, tenant: str, llm: ScriptedLLM
) -> None:
    who = bearer(tenant)
    good, bad = await runs(stub, tenant)
    llm.push(Reply.json({"candidates": []}))
    operation = await stub.LearnFromTrajectories(
        pb.LearnFromTrajectoriesRequest(scope=SCOPE, trajectory_ids=[bad.id]), metadata=who
    )
    done = await pipeline.wait_done(tenant, operation.name)
    assert not done.HasField("error"), done.error
    shown = learning_request(llm)["messages"][1]["content"]
    lines = shown.split("<trajectories>\n", 1)[1].split("\n</trajectories>", 1)[0].splitlines()
    assert [json.loads(line)["id"] for line in lines] == [bad.id]
    assert good.id not in shown
