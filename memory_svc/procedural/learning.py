"""LearnFromTrajectories: a long-running operation on the memory generation machinery.

The request is validated (no model configured is FAILED_PRECONDITION at once), then the
operation (``memory.operations``, kind ``learn_procedural``) and its job
(``LearnProceduralJob`` on ``contextiq.jobs.procedural.learn``) are committed in one
transaction through the generation outbox, and published to JetStream right after the commit
the way generation jobs are (the outbox relay as the safety net). The
extraction worker (``extraction_svc/learn_job.py``) runs it through the internal
ProceduralJobService:

* ``GetLearningInput`` -- the trajectories (the request's ids, or the newest
  :data:`MAX_TRAJECTORIES` of the scope) and the scope's workflows;
* ``ReportLearningProgress`` -- ``learning`` → ``storing``, or ``failed`` with a status;
* ``CompleteLearning`` -- the proposals, validated again here (evidence ids must be
  trajectories of the operation's tenant and scope, workflow updates must target a workflow
  of the scope), stored as candidates idempotently on (operation, position), and the
  operation finished with them. A redelivered job stores nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2
from sqlalchemy import ColumnElement, Table, and_, select, true

from ciq_runtime.db import transaction
from ciq_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from contextiq.extraction.v1 import jobs_pb2
from contextiq.procedural.v1 import (
    procedural_job_service_pb2,
    procedural_pb2,
    procedural_service_pb2,
)
from memory_svc.backend import Backend
from memory_svc.convert import timestamp
from memory_svc.generation import outbox
from memory_svc.operations import OperationStore, pack, to_proto
from memory_svc.procedural import models, validation
from memory_svc.procedural.candidates import CANDIDATE_KINDS, CandidateOps, Proposal
from memory_svc.procedural.convert import trajectory_from_row, workflow_from_row
from memory_svc.procedural.store import ProceduralStore, public_columns
from memory_svc.scopes import scope_key

__all__ = ["KIND", "MAX_TRAJECTORIES", "NO_MODEL_MESSAGE", "Learning"]

#: ``operations.kind`` of learning operations.
KIND: Final = "learn_procedural"
#: Trajectories one operation learns from at most (the newest of the scope by default).
MAX_TRAJECTORIES: Final = 50
_MAX_WORKFLOWS: Final = 50
_DEFAULT_CANDIDATES: Final = 5
_MAX_CANDIDATES: Final = 50
_MAX_MODEL: Final = 256
NO_MODEL_MESSAGE: Final = (
    "no model is configured for learning: set CONTEXTIQ_LLM_MODEL (and the provider's API "
    "key) on the memory service and the worker, or pass model in the request"
)
#: Progress states, in order; a report never moves an operation backwards.
_RANK: Final = {"queued": 0, "learning": 1, "storing": 2, "done": 3, "failed": 3}
_REPORTABLE: Final = ("learning", "storing", "failed")

t = models.trajectories
w = models.workflows


def _metadata(row: Any) -> procedural_service_pb2.LearnFromTrajectoriesMetadata:
    metadata = procedural_service_pb2.LearnFromTrajectoriesMetadata()
    operation = to_proto(row)
    operation.metadata.Unpack(metadata)
    return metadata


class Learning:
    """Accepts learning requests and serves the worker's ProceduralJobService calls."""

    def __init__(
        self,
        backend: Backend,
        store: ProceduralStore,
        candidates: CandidateOps,
        *,
        default_model: str,
    ) -> None:
        """Bind to the service's resources.

        Args:
            backend: The memory service's resources (operations live in its schema).
            store: Procedural tables.
            candidates: Where proposals are stored.
            default_model: ``CONTEXTIQ_LLM_MODEL``, "" when unset.
        """
        self._b = backend
        self._store = store
        self._candidates = candidates
        self._default_model = default_model
        #: Called with the job after each commit, to publish it at once (the generation
        #: relay's dispatch, set by the component once the relay exists; without it jobs
        #: leave on a relay's sweep).
        self.dispatch: Callable[[outbox.Enqueued], None] = lambda _: None

    # ------------------------------------------------------------------ the request

    def _conditions(
        self, table: Table, tenant_id: str, scope: dict[str, str], agent_id: str
    ) -> ColumnElement[bool]:
        parts: list[ColumnElement[bool]] = [table.c.tenant_id == tenant_id]
        if scope:
            parts.append(table.c.scope_key == scope_key(scope))
        if agent_id:
            parts.append(table.c.agent_id == agent_id)
        return and_(true(), *parts)

    async def start(
        self, tenant_id: str, request: procedural_service_pb2.LearnFromTrajectoriesRequest
    ) -> operations_pb2.Operation:
        """Validate, then commit the operation and its job; returns the operation."""
        b = self._b
        request_id = validation.validate_request_id(request.request_id)
        if request_id is not None:
            async with b.sessions() as session:
                existing = await OperationStore.find_by_request_id(
                    session, tenant_id=tenant_id, request_id=request_id
                )
            if existing is not None:
                return existing
        scope = validation.validate_optional_scope(request.scope, field="scope")
        agent = validation.agent_id(request.agent_id, field="agent_id")
        if len(request.trajectory_ids) > MAX_TRAJECTORIES:
            raise InvalidArgument(
                f"trajectory_ids is limited to {MAX_TRAJECTORIES} ids", field="trajectory_ids"
            )
        ids = [
            validation.parse_id(value, what="trajectory", field=f"trajectory_ids[{i}]")
            for i, value in enumerate(request.trajectory_ids)
        ]
        max_candidates = request.max_candidates or _DEFAULT_CANDIDATES
        if not 1 <= max_candidates <= _MAX_CANDIDATES:
            raise InvalidArgument(
                f"max_candidates must be between 1 and {_MAX_CANDIDATES}", field="max_candidates"
            )
        model = request.model.strip() or self._default_model
        if len(model) > _MAX_MODEL:
            raise InvalidArgument(f"model is limited to {_MAX_MODEL} characters", field="model")
        if not model:
            raise FailedPrecondition(NO_MODEL_MESSAGE, reason="LLM_NOT_CONFIGURED")
        condition = self._conditions(t, tenant_id, scope, agent)
        async with self._store.sessions() as session:
            if ids:
                found = set(
                    (
                        await session.execute(select(t.c.id).where(condition, t.c.id.in_(ids)))
                    ).scalars()
                )
                for i, trajectory_id in enumerate(ids):
                    if trajectory_id not in found:
                        raise NotFound(
                            f"trajectory {request.trajectory_ids[i]!r} not found in the scope",
                            metadata={"field": f"trajectory_ids[{i}]"},
                        )
                count = len(set(ids))
            else:
                count = len(
                    (
                        await session.execute(
                            select(t.c.id).where(condition).limit(MAX_TRAJECTORIES)
                        )
                    ).all()
                )
        if count == 0:
            raise FailedPrecondition(
                "there are no trajectories to learn from in this scope"
                + (f" for agent {agent!r}" if agent else "")
                + "; store some with CreateTrajectory first",
                reason="NO_TRAJECTORIES",
            )
        accepted = procedural_service_pb2.LearnFromTrajectoriesRequest(
            scope=scope,
            agent_id=agent,
            trajectory_ids=[str(i) for i in dict.fromkeys(ids)],
            model=model,
            max_candidates=max_candidates,
            request_id=request.request_id,
        )
        now = b.clock()
        metadata = procedural_service_pb2.LearnFromTrajectoriesMetadata(
            state="queued",
            trajectory_count=count,
            created_at=timestamp(now),
            updated_at=timestamp(now),
        )
        row, enqueued = await outbox.create_with_job(
            b.sessions,
            tenant_id=tenant_id,
            kind=KIND,
            bank_id="default",
            metadata=metadata,
            request=accepted,
            request_id=request_id,
            now=now,
            job=lambda name: jobs_pb2.LearnProceduralJob(
                operation_name=name,
                tenant_id=tenant_id,
                request=accepted,
                enqueued_at=timestamp(now),
            ),
            subject=outbox.LEARN_SUBJECT,
        )
        if enqueued is not None:
            self.dispatch(enqueued)
        return to_proto(row)

    # ------------------------------------------------------------------ the worker's calls

    async def _row(self, tenant_id: str, name: str, *, session: Any, lock: bool = False) -> Any:
        row = await OperationStore.row(session, tenant_id=tenant_id, name=name, lock=lock)
        if row.kind != KIND:
            raise NotFound(f"learning operation {name!r} not found")
        return row

    async def learning_input(
        self, tenant_id: str, request: procedural_job_service_pb2.GetLearningInputRequest
    ) -> procedural_job_service_pb2.LearningInput:
        """GetLearningInput: the operation's trajectories and the scope's workflows."""
        async with self._b.sessions() as session:
            row = await self._row(tenant_id, request.operation_name, session=session)
        accepted = procedural_service_pb2.LearnFromTrajectoriesRequest.FromString(row.request)
        scope = dict(accepted.scope)
        condition = self._conditions(t, tenant_id, scope, accepted.agent_id)
        statement = select(*public_columns(t)).where(condition)
        if accepted.trajectory_ids:
            statement = statement.where(t.c.id.in_([uuid.UUID(i) for i in accepted.trajectory_ids]))
        statement = statement.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(MAX_TRAJECTORIES)
        workflows = (
            select(*public_columns(w))
            .where(self._conditions(w, tenant_id, scope, ""))
            .order_by(w.c.created_at.desc(), w.c.id.desc())
            .limit(_MAX_WORKFLOWS)
        )
        async with self._store.sessions() as session:
            trajectory_rows = (await session.execute(statement)).all()
            workflow_rows = (await session.execute(workflows)).all()
        return procedural_job_service_pb2.LearningInput(
            trajectories=[trajectory_from_row(r) for r in trajectory_rows],
            workflows=[workflow_from_row(r) for r in workflow_rows],
            request=accepted,
        )

    async def report(
        self, tenant_id: str, request: procedural_job_service_pb2.ReportLearningProgressRequest
    ) -> operations_pb2.Operation:
        """ReportLearningProgress: forward-only state, counts and usage; or the failure."""
        if request.state not in _REPORTABLE:
            raise InvalidArgument(f"state must be one of {', '.join(_REPORTABLE)}", field="state")
        if request.trajectory_count < 0:
            raise InvalidArgument("trajectory_count must not be negative", field="trajectory_count")
        if request.state == "failed" and request.HasField("error") and request.error.code == 0:
            raise InvalidArgument("error.code must not be OK for a failure", field="error.code")
        now = self._b.clock()
        async with transaction(self._b.sessions) as session:
            row = await self._row(tenant_id, request.operation_name, session=session, lock=True)
            if row.done:
                return to_proto(row)
            metadata = _metadata(row)
            if _RANK[request.state] > _RANK.get(metadata.state, 0):
                metadata.state = request.state
            if request.trajectory_count:
                metadata.trajectory_count = request.trajectory_count
            if request.HasField("usage"):
                metadata.usage.CopyFrom(request.usage)
            metadata.updated_at.CopyFrom(timestamp(now))
            values: dict[str, Any] = {"metadata": pack(metadata), "updated_at": now}
            if request.state == "failed":
                error = status_pb2.Status()
                if request.HasField("error"):
                    error.CopyFrom(request.error)
                else:
                    error.code = code_pb2.INTERNAL
                    error.message = "learning from trajectories failed"
                values["done"] = True
                values["error"] = error.SerializeToString()
            updated = await OperationStore.update_row(session, name=row.name, values=values)
        return to_proto(updated)

    async def complete(
        self, tenant_id: str, request: procedural_job_service_pb2.CompleteLearningRequest
    ) -> procedural_service_pb2.LearnFromTrajectoriesResponse:
        """CompleteLearning: validate and store the proposals, finish the operation."""
        async with self._b.sessions() as session:
            row = await self._row(tenant_id, request.operation_name, session=session)
        if row.done:
            return self._finished(row)
        accepted = procedural_service_pb2.LearnFromTrajectoriesRequest.FromString(row.request)
        scope = dict(accepted.scope)
        proposals = await self._validate(tenant_id, accepted, request.proposals)
        stored = await self._candidates.store_proposals(
            tenant_id, operation_name=row.name, scope=scope, proposals=proposals
        )
        response = procedural_service_pb2.LearnFromTrajectoriesResponse(
            candidates=stored, usage=request.usage
        )
        now = self._b.clock()
        async with transaction(self._b.sessions) as session:
            row = await self._row(tenant_id, request.operation_name, session=session, lock=True)
            if row.done:
                return self._finished(row)
            metadata = _metadata(row)
            metadata.state = "done"
            if request.trajectory_count:
                metadata.trajectory_count = request.trajectory_count
            if request.HasField("usage"):
                metadata.usage.CopyFrom(request.usage)
            metadata.updated_at.CopyFrom(timestamp(now))
            await OperationStore.update_row(
                session,
                name=row.name,
                values={
                    "done": True,
                    "metadata": pack(metadata),
                    "response": pack(response),
                    "updated_at": now,
                },
            )
        return response

    def _finished(self, row: Any) -> procedural_service_pb2.LearnFromTrajectoriesResponse:
        operation = to_proto(row)
        if operation.HasField("error"):
            raise FailedPrecondition(
                f"learning operation {row.name!r} already failed: {operation.error.message}",
                reason="OPERATION_FAILED",
            )
        response = procedural_service_pb2.LearnFromTrajectoriesResponse()
        operation.response.Unpack(response)
        return response

    async def _validate(
        self,
        tenant_id: str,
        accepted: procedural_service_pb2.LearnFromTrajectoriesRequest,
        proposals: Sequence[procedural_pb2.SkillCandidate],
    ) -> list[Proposal]:
        """Check every proposal; evidence and targets must be of the tenant and scope."""
        if len(proposals) > accepted.max_candidates:
            raise InvalidArgument(
                f"at most {accepted.max_candidates} proposals were asked for", field="proposals"
            )
        scope = dict(accepted.scope)
        evidence: set[uuid.UUID] = set()
        targets: set[uuid.UUID] = set()
        for i, proposal in enumerate(proposals):
            for j, value in enumerate(proposal.evidence_trajectory_ids):
                evidence.add(self._uuid(value, f"proposals[{i}].evidence_trajectory_ids[{j}]"))
            if proposal.kind == "workflow_update":
                targets.add(
                    self._uuid(proposal.target_workflow_id, f"proposals[{i}].target_workflow_id")
                )
        async with self._store.sessions() as session:
            known_trajectories = set(
                (
                    await session.execute(
                        select(t.c.id).where(
                            self._conditions(t, tenant_id, scope, accepted.agent_id),
                            t.c.id.in_(list(evidence)),
                        )
                    )
                ).scalars()
            )
            known_workflows = set(
                (
                    await session.execute(
                        select(w.c.id).where(
                            self._conditions(w, tenant_id, scope, ""), w.c.id.in_(list(targets))
                        )
                    )
                ).scalars()
            )
        out = []
        for i, proposal in enumerate(proposals):
            where = f"proposals[{i}]"
            if proposal.kind not in CANDIDATE_KINDS:
                raise InvalidArgument(
                    f"{where}.kind must be one of {', '.join(CANDIDATE_KINDS)}",
                    field=f"{where}.kind",
                )
            if not proposal.evidence_trajectory_ids:
                raise InvalidArgument(
                    f"{where}.evidence_trajectory_ids must name at least one trajectory",
                    field=f"{where}.evidence_trajectory_ids",
                )
            for value in proposal.evidence_trajectory_ids:
                if uuid.UUID(value) not in known_trajectories:
                    raise InvalidArgument(
                        f"{where}.evidence_trajectory_ids: {value!r} is not a trajectory of "
                        "the operation's scope",
                        field=f"{where}.evidence_trajectory_ids",
                    )
            skill_type = proposal.skill_type
            if proposal.kind == "skill" or skill_type:
                validation.skill_type(skill_type, field=f"{where}.skill_type")
            steps: list[dict[str, Any]] = []
            if proposal.kind == "workflow_update":
                if uuid.UUID(proposal.target_workflow_id) not in known_workflows:
                    raise InvalidArgument(
                        f"{where}.target_workflow_id is not a workflow of the operation's scope",
                        field=f"{where}.target_workflow_id",
                    )
                steps = validation.workflow_steps(
                    proposal.proposed_steps, field=f"{where}.proposed_steps"
                )
            points = validation.learning_points(
                proposal.learning_points, field=f"{where}.learning_points"
            )
            if proposal.kind == "learning_point" and not points:
                raise InvalidArgument(
                    f"{where}.learning_points must not be empty for a learning point",
                    field=f"{where}.learning_points",
                )
            validation.validate_rate(proposal.confidence, field=f"{where}.confidence")
            out.append(
                Proposal(
                    kind=proposal.kind,
                    name=validation.text_field(
                        proposal.name,
                        field=f"{where}.name",
                        limit=validation.MAX_NAME,
                        required=True,
                    ),
                    description=validation.text_field(
                        proposal.description,
                        field=f"{where}.description",
                        limit=validation.MAX_TEXT,
                        required=False,
                    ),
                    skill_type=skill_type,
                    implementation=validation.text_field(
                        proposal.implementation,
                        field=f"{where}.implementation",
                        limit=validation.MAX_IMPLEMENTATION,
                        required=proposal.kind == "skill",
                    ),
                    target_workflow_id=proposal.target_workflow_id
                    if proposal.kind == "workflow_update"
                    else "",
                    proposed_steps=steps,
                    learning_points=points,
                    evidence_trajectory_ids=list(dict.fromkeys(proposal.evidence_trajectory_ids)),
                    rationale=validation.text_field(
                        proposal.rationale,
                        field=f"{where}.rationale",
                        limit=validation.MAX_TEXT,
                        required=False,
                    ),
                    confidence=proposal.confidence,
                )
            )
        return out

    @staticmethod
    def _uuid(value: str, field: str) -> uuid.UUID:
        try:
            return uuid.UUID(value)
        except ValueError:
            raise InvalidArgument(f"{field} is not an id of this scope", field=field) from None
