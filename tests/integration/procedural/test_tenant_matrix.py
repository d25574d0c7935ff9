"""Tenant matrix for procedural memory: tenant B, knowing every id of tenant A's workflows,
skills, trajectories and candidates, can neither read nor change them, and B's listings and
searches never mention them -- over gRPC and over REST."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import field_mask_pb2

from contextiq.procedural.v1 import (
    procedural_job_service_pb2,
    procedural_job_service_pb2_grpc,
    procedural_pb2,
    procedural_service_pb2_grpc,
)
from gateway.app import create_app
from gateway.server import GatewayServer
from memory_svc.procedural.candidates import Proposal
from tests.auth_helpers import bearer, bearer_headers
from tests.integration.memory.conftest import MemoryServer
from tests.integration.procedural.conftest import (
    create_skill,
    create_trajectory,
    create_workflow,
    pb,
)
from tests.tenant_matrix import LEAK, Case, Metadata

SERVICE = "contextiq.procedural.v1.ProceduralService"
TENANT_A = "tenant-a-" + uuid.uuid4().hex[:8]
SECRET = "quarterly payroll export"


def _tenant_of(md: Metadata) -> str:
    """The tenant of a test JWT (B acts for itself; only the id it names is A's)."""
    import jwt

    token = dict(md)["authorization"].removeprefix("Bearer ")
    return str(jwt.decode(token, options={"verify_signature": False})["org_id"])


def _stub(channel: grpc.aio.Channel) -> procedural_service_pb2_grpc.ProceduralServiceStub:
    return procedural_service_pb2_grpc.ProceduralServiceStub(channel)


def rpc(method: str, build: Any) -> Any:
    async def call(channel: grpc.aio.Channel, foreign_id: str, md: Metadata) -> Any:
        return await getattr(_stub(channel), method)(build(foreign_id), metadata=md)

    return call


def _search(kinds: list[str]) -> Any:
    return rpc(
        "SearchProcedural", lambda i: pb.SearchProceduralRequest(search_query=SECRET, kinds=kinds)
    )


CASES = [
    # workflows
    Case(
        "workflow",
        "get",
        rpc("GetWorkflow", lambda i: pb.GetWorkflowRequest(id=i)),
        lambda i: ("GET", f"/api/v1/procedural/workflows/{i}", None),
    ),
    Case(
        "workflow",
        "update",
        rpc(
            "UpdateWorkflow",
            lambda i: pb.UpdateWorkflowRequest(
                workflow=procedural_pb2.Workflow(id=i, name="hijacked"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
        ),
        lambda i: ("PATCH", f"/api/v1/procedural/workflows/{i}", {"name": "hijacked"}),
    ),
    Case(
        "workflow",
        "delete",
        rpc("DeleteWorkflow", lambda i: pb.DeleteWorkflowRequest(id=i)),
        lambda i: ("DELETE", f"/api/v1/procedural/workflows/{i}", None),
    ),
    Case(
        "workflow",
        "record_usage",
        rpc("RecordWorkflowUsage", lambda i: pb.RecordWorkflowUsageRequest(id=i)),
        lambda i: ("POST", f"/api/v1/procedural/workflows/{i}:recordUsage", {}),
    ),
    Case(
        "workflow",
        "list",
        rpc("ListWorkflows", lambda i: pb.ListWorkflowsRequest(page_size=1000)),
        lambda i: ("GET", "/api/v1/procedural/workflows?page_size=1000", None),
        kind=LEAK,
    ),
    # skills
    Case(
        "skill",
        "get",
        rpc("GetSkill", lambda i: pb.GetSkillRequest(id=i)),
        lambda i: ("GET", f"/api/v1/procedural/skills/{i}", None),
    ),
    Case(
        "skill",
        "update",
        rpc(
            "UpdateSkill",
            lambda i: pb.UpdateSkillRequest(
                skill=procedural_pb2.Skill(id=i, implementation="steal()")
            ),
        ),
        lambda i: ("PATCH", f"/api/v1/procedural/skills/{i}", {"implementation": "steal()"}),
    ),
    Case(
        "skill",
        "delete",
        rpc("DeleteSkill", lambda i: pb.DeleteSkillRequest(id=i)),
        lambda i: ("DELETE", f"/api/v1/procedural/skills/{i}", None),
    ),
    Case(
        "skill",
        "versions",
        rpc("ListSkillVersions", lambda i: pb.ListSkillVersionsRequest(skill_id=i)),
        lambda i: ("GET", f"/api/v1/procedural/skills/{i}/versions", None),
    ),
    Case(
        "skill",
        "version",
        rpc("GetSkillVersion", lambda i: pb.GetSkillVersionRequest(skill_id=i, version=1)),
        lambda i: ("GET", f"/api/v1/procedural/skills/{i}/versions/1", None),
    ),
    Case(
        "skill",
        "record_outcome",
        rpc("RecordSkillOutcome", lambda i: pb.RecordSkillOutcomeRequest(id=i, success=False)),
        lambda i: ("POST", f"/api/v1/procedural/skills/{i}:recordOutcome", {"success": False}),
    ),
    Case(
        "skill",
        "list",
        rpc("ListSkills", lambda i: pb.ListSkillsRequest(page_size=1000)),
        lambda i: ("GET", "/api/v1/procedural/skills?page_size=1000", None),
        kind=LEAK,
    ),
    # trajectories
    Case(
        "trajectory",
        "get",
        rpc("GetTrajectory", lambda i: pb.GetTrajectoryRequest(id=i)),
        lambda i: ("GET", f"/api/v1/procedural/trajectories/{i}", None),
    ),
    Case(
        "trajectory",
        "list",
        rpc("ListTrajectories", lambda i: pb.ListTrajectoriesRequest(page_size=1000)),
        lambda i: ("GET", "/api/v1/procedural/trajectories?page_size=1000", None),
        kind=LEAK,
    ),
    # candidates
    Case(
        "candidate",
        "get",
        rpc("GetSkillCandidate", lambda i: pb.GetSkillCandidateRequest(id=i)),
        lambda i: ("GET", f"/api/v1/procedural/candidates/{i}", None),
    ),
    Case(
        "candidate",
        "promote",
        rpc("PromoteSkillCandidate", lambda i: pb.PromoteSkillCandidateRequest(id=i)),
        lambda i: ("POST", f"/api/v1/procedural/candidates/{i}:promote", {}),
    ),
    Case(
        "candidate",
        "reject",
        rpc("RejectSkillCandidate", lambda i: pb.RejectSkillCandidateRequest(id=i)),
        lambda i: ("POST", f"/api/v1/procedural/candidates/{i}:reject", {}),
    ),
    Case(
        "candidate",
        "list",
        rpc("ListSkillCandidates", lambda i: pb.ListSkillCandidatesRequest(page_size=1000)),
        lambda i: ("GET", "/api/v1/procedural/candidates?page_size=1000", None),
        kind=LEAK,
    ),
    # search, once per kind of A's objects
    *(
        Case(
            resource,
            "search",
            _search([]),
            lambda i: ("POST", "/api/v1/procedural/search", {"search_query": SECRET, "top_k": 100}),
            kind=LEAK,
        )
        for resource in ("workflow", "skill", "trajectory")
    ),
    # learning: A's trajectories cannot be learnt from, A's operation cannot be read
    Case(
        "trajectory",
        "learn_from",
        rpc(
            "LearnFromTrajectories",
            lambda i: pb.LearnFromTrajectoriesRequest(trajectory_ids=[i], model="openai/x"),
        ),
        lambda i: (
            "POST",
            "/api/v1/procedural/learn",
            {"trajectory_ids": [i], "model": "openai/x"},
        ),
    ),
    Case(
        "operation",
        "get",
        lambda channel, i, md: operations_pb2_grpc.OperationsStub(channel).GetOperation(
            operations_pb2.GetOperationRequest(name=i), metadata=md
        ),
        None,
    ),
    Case(
        "operation",
        "learning_input",
        lambda channel, i, md: procedural_job_service_pb2_grpc.ProceduralJobServiceStub(
            channel
        ).GetLearningInput(
            procedural_job_service_pb2.GetLearningInputRequest(
                operation_name=i, tenant_id=_tenant_of(md)
            ),
            metadata=md,
        ),
        None,
    ),
    Case(
        "skill",
        "search_by_rate",
        _search(["skill"]),
        lambda i: (
            "POST",
            "/api/v1/procedural/search",
            {"search_query": SECRET, "min_success_rate": 0.0, "skill_type": "tool_usage"},
        ),
        kind=LEAK,
    ),
]


@pytest.fixture(scope="module")
async def foreign(procedural_server: MemoryServer) -> dict[str, str]:
    """Tenant A's objects, by resource."""
    who = bearer(TENANT_A)
    async with grpc.aio.insecure_channel(procedural_server.address) as channel:
        stub = _stub(channel)
        workflow = await create_workflow(stub, who, name=SECRET, description=SECRET)
        skill = await create_skill(stub, who, name=SECRET, description=SECRET)
        trajectory = await create_trajectory(stub, who, task=SECRET)
    parts = procedural_server.parts.procedural
    assert parts is not None
    (candidate,) = await parts.candidates.store_proposals(
        TENANT_A,
        operation_name="operations/a",
        scope={},
        proposals=[
            Proposal(
                kind="skill",
                name=SECRET,
                description=SECRET,
                skill_type="tool_usage",
                implementation="x()",
                target_workflow_id="",
                proposed_steps=[],
                learning_points=[],
                evidence_trajectory_ids=[trajectory.id],
                rationale="",
                confidence=0.5,
            )
        ],
    )
    async with grpc.aio.insecure_channel(procedural_server.address) as channel:
        operation = await _stub(channel).LearnFromTrajectories(
            pb.LearnFromTrajectoriesRequest(model="openai/x"), metadata=who
        )
    return {
        "operation": operation.name,
        "workflow": workflow.id,
        "skill": skill.id,
        "trajectory": trajectory.id,
        "candidate": candidate.id,
    }


@pytest.fixture(scope="module")
async def http(procedural_server: MemoryServer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: procedural_server.address})
    server = GatewayServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            yield client
    finally:
        await server.stop()


async def _a_is_intact(channel: grpc.aio.Channel, foreign: dict[str, str]) -> None:
    who = bearer(TENANT_A)
    stub = _stub(channel)
    workflow = await stub.GetWorkflow(pb.GetWorkflowRequest(id=foreign["workflow"]), metadata=who)
    assert workflow.name == SECRET
    assert workflow.usage_count == 0
    skill = await stub.GetSkill(pb.GetSkillRequest(id=foreign["skill"]), metadata=who)
    assert (skill.version, skill.failure_count) == (1, 0)
    candidate = await stub.GetSkillCandidate(
        pb.GetSkillCandidateRequest(id=foreign["candidate"]), metadata=who
    )
    assert candidate.state == "proposed"
    found = await stub.SearchProcedural(
        pb.SearchProceduralRequest(search_query=SECRET), metadata=who
    )
    assert len(found.results) == 3


@pytest.mark.parametrize("case", CASES, ids=Case.name)
async def test_grpc(case: Case, procedural_server: MemoryServer, foreign: dict[str, str]) -> None:
    async with grpc.aio.insecure_channel(procedural_server.address) as channel:
        await case.check_grpc(
            channel, foreign[case.resource], bearer("tenant-b-" + uuid.uuid4().hex[:8])
        )
        await _a_is_intact(channel, foreign)


@pytest.mark.parametrize("case", [c for c in CASES if c.via_rest], ids=Case.name)
async def test_rest(
    case: Case, http: httpx.AsyncClient, procedural_server: MemoryServer, foreign: dict[str, str]
) -> None:
    await case.check_rest(
        http, foreign[case.resource], bearer_headers("tenant-b-" + uuid.uuid4().hex[:8])
    )
    async with grpc.aio.insecure_channel(procedural_server.address) as channel:
        await _a_is_intact(channel, foreign)


async def test_b_cannot_cite_a_trajectory_in_an_outcome(
    procedural_server: MemoryServer, foreign: dict[str, str]
) -> None:
    who_b = bearer("tenant-b-" + uuid.uuid4().hex[:8])
    async with grpc.aio.insecure_channel(procedural_server.address) as channel:
        stub = _stub(channel)
        mine = await create_skill(stub, who_b)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RecordSkillOutcome(
                pb.RecordSkillOutcomeRequest(
                    id=mine.id, success=True, trajectory_id=foreign["trajectory"]
                ),
                metadata=who_b,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
