"""ProceduralService: thin servicer over the procedural store, search and candidates.

Each RPC takes the caller's tenant from :func:`current_principal` and hands the request on;
errors are domain exceptions the error interceptor turns into statuses. RPCs not built yet
answer UNIMPLEMENTED, naming themselves.
"""

from __future__ import annotations

from typing import Any

from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from ciq_runtime.principal import current_principal
from ciq_runtime.unimplemented import answer_unimplemented
from contextiq.procedural.v1 import (
    procedural_job_service_pb2,
    procedural_job_service_pb2_grpc,
    procedural_pb2,
    procedural_service_pb2,
    procedural_service_pb2_grpc,
)
from memory_svc.generation.servicer import acting_tenant
from memory_svc.procedural.candidates import CandidateOps
from memory_svc.procedural.learning import Learning
from memory_svc.procedural.search import ProceduralSearcher
from memory_svc.procedural.store import ProceduralStore

__all__ = ["ProceduralJobServicer", "ProceduralServicer"]

pb = procedural_service_pb2


def _tenant() -> str:
    return current_principal().tenant_id


@answer_unimplemented(
    procedural_service_pb2.DESCRIPTOR.services_by_name["ProceduralService"],
    procedural_service_pb2_grpc.ProceduralServiceServicer,
)
class ProceduralServicer(procedural_service_pb2_grpc.ProceduralServiceServicer):
    """ProceduralService: workflows, skills, trajectories, search, candidates and learning."""

    def __init__(
        self,
        store: ProceduralStore,
        search: ProceduralSearcher,
        candidates: CandidateOps,
        learning: Learning,
    ) -> None:
        """Bind to the procedural operations."""
        self._store = store
        self._search = search
        self._candidates = candidates
        self._learning = learning

    async def LearnFromTrajectories(
        self, request: pb.LearnFromTrajectoriesRequest, context: Any
    ) -> operations_pb2.Operation:
        """Start learning from a scope's trajectories (a long-running operation)."""
        return await self._learning.start(_tenant(), request)

    async def CreateWorkflow(
        self, request: pb.CreateWorkflowRequest, context: Any
    ) -> procedural_pb2.Workflow:
        """Store a workflow."""
        return await self._store.create_workflow(_tenant(), request)

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: Any
    ) -> procedural_pb2.Workflow:
        """Get a workflow."""
        return await self._store.get_workflow(_tenant(), request.id)

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Any
    ) -> procedural_service_pb2.ListWorkflowsResponse:
        """List workflows, newest first."""
        return await self._store.list_workflows(_tenant(), request)

    async def UpdateWorkflow(
        self, request: pb.UpdateWorkflowRequest, context: Any
    ) -> procedural_pb2.Workflow:
        """Update a workflow (AIP-134)."""
        return await self._store.update_workflow(_tenant(), request)

    async def DeleteWorkflow(
        self, request: pb.DeleteWorkflowRequest, context: Any
    ) -> empty_pb2.Empty:
        """Delete a workflow."""
        await self._store.delete_workflow(_tenant(), request.id)
        return empty_pb2.Empty()

    async def RecordWorkflowUsage(
        self, request: pb.RecordWorkflowUsageRequest, context: Any
    ) -> procedural_pb2.Workflow:
        """Count one use of a workflow."""
        return await self._store.record_workflow_usage(_tenant(), request.id)

    async def CreateSkill(
        self, request: pb.CreateSkillRequest, context: Any
    ) -> procedural_pb2.Skill:
        """Store a skill (version 1)."""
        return await self._store.create_skill(_tenant(), request)

    async def GetSkill(self, request: pb.GetSkillRequest, context: Any) -> procedural_pb2.Skill:
        """Get a skill at its current version."""
        return await self._store.get_skill(_tenant(), request.id)

    async def ListSkills(
        self, request: pb.ListSkillsRequest, context: Any
    ) -> procedural_service_pb2.ListSkillsResponse:
        """List skills, newest first."""
        return await self._store.list_skills(_tenant(), request)

    async def UpdateSkill(
        self, request: pb.UpdateSkillRequest, context: Any
    ) -> procedural_pb2.Skill:
        """Update a skill; content changes make a new version."""
        return await self._store.update_skill(_tenant(), request)

    async def DeleteSkill(self, request: pb.DeleteSkillRequest, context: Any) -> empty_pb2.Empty:
        """Delete a skill with its versions."""
        await self._store.delete_skill(_tenant(), request.id)
        return empty_pb2.Empty()

    async def ListSkillVersions(
        self, request: pb.ListSkillVersionsRequest, context: Any
    ) -> procedural_service_pb2.ListSkillVersionsResponse:
        """List a skill's versions, newest first."""
        return await self._store.list_skill_versions(_tenant(), request)

    async def GetSkillVersion(
        self, request: pb.GetSkillVersionRequest, context: Any
    ) -> procedural_pb2.SkillVersion:
        """Get one version of a skill."""
        return await self._store.get_skill_version(_tenant(), request)

    async def RecordSkillOutcome(
        self, request: pb.RecordSkillOutcomeRequest, context: Any
    ) -> procedural_pb2.Skill:
        """Record an outcome; updates the success rate."""
        return await self._store.record_skill_outcome(_tenant(), request)

    async def CreateTrajectory(
        self, request: pb.CreateTrajectoryRequest, context: Any
    ) -> procedural_pb2.Trajectory:
        """Store an agent trajectory."""
        return await self._store.create_trajectory(_tenant(), request)

    async def GetTrajectory(
        self, request: pb.GetTrajectoryRequest, context: Any
    ) -> procedural_pb2.Trajectory:
        """Get a trajectory."""
        return await self._store.get_trajectory(_tenant(), request.id)

    async def ListTrajectories(
        self, request: pb.ListTrajectoriesRequest, context: Any
    ) -> procedural_service_pb2.ListTrajectoriesResponse:
        """List trajectories, newest first."""
        return await self._store.list_trajectories(_tenant(), request)

    async def SearchProcedural(
        self, request: pb.SearchProceduralRequest, context: Any
    ) -> procedural_service_pb2.SearchProceduralResponse:
        """Hybrid search over workflows, skills and trajectories."""
        return await self._search.search(_tenant(), request)

    async def ListSkillCandidates(
        self, request: pb.ListSkillCandidatesRequest, context: Any
    ) -> procedural_service_pb2.ListSkillCandidatesResponse:
        """List skill candidates, newest first."""
        return await self._candidates.list_candidates(_tenant(), request)

    async def GetSkillCandidate(
        self, request: pb.GetSkillCandidateRequest, context: Any
    ) -> procedural_pb2.SkillCandidate:
        """Get a skill candidate."""
        return await self._candidates.get(_tenant(), request.id)

    async def PromoteSkillCandidate(
        self, request: pb.PromoteSkillCandidateRequest, context: Any
    ) -> procedural_pb2.SkillCandidate:
        """Promote a candidate into a skill (or apply its workflow update)."""
        return await self._candidates.promote(_tenant(), request)

    async def RejectSkillCandidate(
        self, request: pb.RejectSkillCandidateRequest, context: Any
    ) -> procedural_pb2.SkillCandidate:
        """Reject a candidate."""
        return await self._candidates.reject(_tenant(), request)


@answer_unimplemented(
    procedural_job_service_pb2.DESCRIPTOR.services_by_name["ProceduralJobService"],
    procedural_job_service_pb2_grpc.ProceduralJobServiceServicer,
)
class ProceduralJobServicer(procedural_job_service_pb2_grpc.ProceduralJobServiceServicer):
    """ProceduralJobService: the internal RPCs of the learning worker (ADMIN; the request's
    tenant_id must be the credential's tenant)."""

    def __init__(self, learning: Learning) -> None:
        """Bind to the learning operations."""
        self._learning = learning

    async def GetLearningInput(
        self, request: procedural_job_service_pb2.GetLearningInputRequest, context: Any
    ) -> procedural_job_service_pb2.LearningInput:
        """The operation's trajectories and the scope's workflows."""
        return await self._learning.learning_input(acting_tenant(request.tenant_id), request)

    async def ReportLearningProgress(
        self, request: procedural_job_service_pb2.ReportLearningProgressRequest, context: Any
    ) -> operations_pb2.Operation:
        """Record progress (or the failure) of a learning operation."""
        return await self._learning.report(acting_tenant(request.tenant_id), request)

    async def CompleteLearning(
        self, request: procedural_job_service_pb2.CompleteLearningRequest, context: Any
    ) -> pb.LearnFromTrajectoriesResponse:
        """Store the proposals as candidates and finish the operation (idempotent)."""
        return await self._learning.complete(acting_tenant(request.tenant_id), request)
