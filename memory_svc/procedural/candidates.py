"""Skill candidates: what learning proposes, kept with its evidence until a person (or an agent
with PROCEDURAL_WRITE) promotes or rejects it.

Promotion is explicit and atomic: in one transaction the candidate is locked, the skill is
created (``source_candidate_id`` points back) or the workflow's steps replaced, and the
candidate becomes ``promoted`` with ``promoted_skill_id`` set; its evidence trajectory ids
stay as they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ciq_runtime.db import transaction
from ciq_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from contextiq.procedural.v1 import procedural_pb2, procedural_service_pb2
from memory_svc.procedural import models, validation
from memory_svc.procedural.convert import candidate_from_row, search_text
from memory_svc.procedural.indexing import Upsert
from memory_svc.procedural.listing import list_page
from memory_svc.procedural.store import ProceduralStore
from memory_svc.scopes import scope_key

__all__ = ["CANDIDATE_KINDS", "CandidateOps", "Proposal"]

c = models.candidates
CANDIDATE_KINDS: Final = ("skill", "workflow_update", "learning_point")
_MAX_REASON: Final = 4_000


@dataclass(frozen=True, slots=True)
class Proposal:
    """One validated proposal of a learning operation.

    Attributes:
        kind: One of :data:`CANDIDATE_KINDS`.
        name: Proposed name.
        description: Proposed description.
        skill_type: Proposed skill type ("" for workflow updates).
        implementation: Proposed implementation.
        target_workflow_id: For workflow updates.
        proposed_steps: For workflow updates: WorkflowStep proto JSON, numbered.
        learning_points: Lessons.
        evidence_trajectory_ids: Trajectories the proposal is drawn from (checked).
        rationale: The model's reasoning.
        confidence: In [0, 1].
    """

    kind: str
    name: str
    description: str
    skill_type: str
    implementation: str
    target_workflow_id: str
    proposed_steps: list[dict[str, Any]]
    learning_points: list[str]
    evidence_trajectory_ids: list[str]
    rationale: str
    confidence: float
    extra: dict[str, Any] = field(default_factory=dict)


class CandidateOps:
    """List / get / promote / reject candidates, and store a learning operation's proposals."""

    def __init__(self, store: ProceduralStore) -> None:
        """Bind to the procedural store."""
        self._store = store

    async def _get_row(self, tenant_id: str, candidate_id: uuid.UUID) -> Any | None:
        async with self._store.sessions() as session:
            return (
                await session.execute(
                    select(c).where(c.c.tenant_id == tenant_id, c.c.id == candidate_id)
                )
            ).one_or_none()

    async def get(self, tenant_id: str, candidate_id: str) -> procedural_pb2.SkillCandidate:
        """GetSkillCandidate."""
        parsed = validation.parse_id(candidate_id, what="candidate")
        row = await self._get_row(tenant_id, parsed)
        if row is None:
            raise NotFound(f"candidate {candidate_id!r} not found")
        return candidate_from_row(row)

    async def list_candidates(
        self, tenant_id: str, request: procedural_service_pb2.ListSkillCandidatesRequest
    ) -> procedural_service_pb2.ListSkillCandidatesResponse:
        """ListSkillCandidates, newest first."""
        async with self._store.sessions() as session:
            page = await list_page(
                session,
                table=c,
                kind="candidate",
                tenant_id=tenant_id,
                filter_text=request.filter,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return procedural_service_pb2.ListSkillCandidatesResponse(
            candidates=[candidate_from_row(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    def _require_proposed(self, row: Any) -> None:
        if row.state != "proposed":
            raise FailedPrecondition(
                f"candidate {row.id} is already {row.state}; only proposed candidates can be "
                "promoted or rejected",
                reason="CANDIDATE_NOT_PROPOSED",
                metadata={"candidate_id": str(row.id), "state": row.state},
            )

    async def reject(
        self, tenant_id: str, request: procedural_service_pb2.RejectSkillCandidateRequest
    ) -> procedural_pb2.SkillCandidate:
        """RejectSkillCandidate."""
        parsed = validation.parse_id(request.id, what="candidate")
        reason = validation.text_field(
            request.reason, field="reason", limit=_MAX_REASON, required=False
        )
        async with transaction(self._store.sessions) as session:
            row = (
                await session.execute(
                    select(c).where(c.c.tenant_id == tenant_id, c.c.id == parsed).with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"candidate {request.id!r} not found")
            self._require_proposed(row)
            row = (
                await session.execute(
                    update(c)
                    .where(c.c.id == parsed)
                    .values(state="rejected", reject_reason=reason, updated_at=_now(self._store))
                    .returning(c)
                )
            ).one()
        return candidate_from_row(row)

    def _skill_of(self, row: Any, override: procedural_pb2.Skill | None) -> validation.NewSkill:
        """The skill a candidate promotes to, with the request's overrides applied."""
        implementation = row.implementation or "\n".join(
            f"- {point}" for point in row.learning_points
        )
        merged = procedural_pb2.Skill(
            name=row.name,
            description=row.description,
            skill_type=row.skill_type or "reasoning_pattern",
            implementation=implementation,
            scope=row.scope,
        )
        merged.metadata.update({"evidence_trajectory_ids": list(row.evidence_trajectory_ids)})
        if override is not None:
            for name in ("name", "description", "skill_type", "implementation", "agent_id"):
                value = getattr(override, name)
                if value:
                    setattr(merged, name, value)
            if override.HasField("metadata"):
                merged.metadata.update(dict(override.metadata))
            if override.scope and dict(override.scope) != dict(row.scope):
                raise InvalidArgument(
                    "the promoted skill keeps the candidate's scope",
                    field="skill_override.scope",
                )
        return validation.validate_new_skill(merged, prefix="skill_override.")

    async def promote(
        self, tenant_id: str, request: procedural_service_pb2.PromoteSkillCandidateRequest
    ) -> procedural_pb2.SkillCandidate:
        """PromoteSkillCandidate: a skill (or a workflow's new steps), atomically."""
        parsed = validation.parse_id(request.id, what="candidate")
        current = await self._get_row(tenant_id, parsed)
        if current is None:
            raise NotFound(f"candidate {request.id!r} not found")
        self._require_proposed(current)
        if current.kind == "workflow_update":
            return await self._apply_workflow_update(tenant_id, current)
        override = request.skill_override if request.HasField("skill_override") else None
        new = self._skill_of(current, override)
        store = self._store
        vector = (
            await store.index.embed(
                [
                    search_text(
                        "skill",
                        {
                            "name": new.name,
                            "skill_type": new.skill_type,
                            "description": new.description,
                            "implementation": new.implementation,
                        },
                    )
                ]
            )
        )[0]
        async with transaction(store.sessions) as session:
            row = (
                await session.execute(
                    select(c).where(c.c.tenant_id == tenant_id, c.c.id == parsed).with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"candidate {request.id!r} not found")
            self._require_proposed(row)
            skill = await store.insert_skill(
                tenant_id,
                new,
                request_id=None,
                source_candidate_id=str(parsed),
                session=session,
                vector=vector,
            )
            promoted = (
                await session.execute(
                    update(c)
                    .where(c.c.id == parsed)
                    .values(
                        state="promoted",
                        promoted_skill_id=str(skill.id),
                        updated_at=_now(store),
                    )
                    .returning(c)
                )
            ).one()
        await store.index.apply(upserts=[Upsert("skill", skill, vector)])
        return candidate_from_row(promoted)

    async def _apply_workflow_update(
        self, tenant_id: str, row: Any
    ) -> procedural_pb2.SkillCandidate:
        """Promote a workflow update: the target workflow takes the proposed steps."""
        store = self._store
        workflow_id = validation.parse_id(
            row.target_workflow_id, what="workflow", field="target_workflow_id"
        )

        async def mark_promoted(
            session: Any, locked: Any, changes: dict[str, Any]
        ) -> dict[str, Any]:
            candidate = (
                await session.execute(
                    select(c).where(c.c.tenant_id == tenant_id, c.c.id == row.id).with_for_update()
                )
            ).one()
            self._require_proposed(candidate)
            await session.execute(
                update(c).where(c.c.id == row.id).values(state="promoted", updated_at=_now(store))
            )
            return changes

        await store.update_searchable(
            "workflow",
            models.workflows,
            tenant_id,
            workflow_id,
            {"steps": list(row.proposed_steps)},
            "",
            scope={},
            on_locked=mark_promoted,
        )
        updated = await self._get_row(tenant_id, row.id)
        assert updated is not None
        return candidate_from_row(updated)

    async def store_proposals(
        self,
        tenant_id: str,
        *,
        operation_name: str,
        scope: dict[str, str],
        proposals: Sequence[Proposal],
    ) -> list[procedural_pb2.SkillCandidate]:
        """Store a learning operation's proposals; idempotent on (operation, position).

        A redelivered job stores nothing twice: the rows of an operation's earlier attempt
        are returned instead.
        """
        now = _now(self._store)
        async with transaction(self._store.sessions) as session:
            for ordinal, proposal in enumerate(proposals):
                await session.execute(
                    pg_insert(c)
                    .values(
                        id=uuid.uuid4(),
                        tenant_id=tenant_id,
                        kind=proposal.kind,
                        name=proposal.name,
                        description=proposal.description,
                        skill_type=proposal.skill_type,
                        implementation=proposal.implementation,
                        target_workflow_id=proposal.target_workflow_id,
                        proposed_steps=proposal.proposed_steps,
                        learning_points=proposal.learning_points,
                        evidence_trajectory_ids=proposal.evidence_trajectory_ids,
                        rationale=proposal.rationale,
                        confidence=proposal.confidence,
                        state="proposed",
                        operation_name=operation_name,
                        scope=scope,
                        scope_key=scope_key(scope),
                        created_at=now,
                        updated_at=now,
                        ordinal=ordinal,
                    )
                    .on_conflict_do_nothing(
                        index_elements=[c.c.tenant_id, c.c.operation_name, c.c.ordinal],
                        index_where=text("operation_name <> ''"),
                    )
                )
            rows = (
                await session.execute(
                    select(c)
                    .where(c.c.tenant_id == tenant_id, c.c.operation_name == operation_name)
                    .order_by(c.c.ordinal)
                )
            ).all()
        return [candidate_from_row(row) for row in rows]


def _now(store: ProceduralStore) -> Any:
    return store.clock()
