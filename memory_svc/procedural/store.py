"""Workflows, skills (with versions and outcomes) and trajectories: the standard methods.

The write path of a searchable object is the memory service's:

1. validate the whole request (nothing is embedded or written for a bad one);
2. embed the object's search text *before* the transaction opens;
3. commit the row (marked ``index_dirty``) -- with its version row for skills;
4. write the vector index, so the change is searchable when the RPC returns
   (:class:`~memory_svc.procedural.indexing.ProceduralIndex` retries it later if that fails).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ciq_runtime.db import transaction
from ciq_runtime.errors import Aborted, InvalidArgument, NotFound
from contextiq.procedural.v1 import procedural_pb2, procedural_service_pb2
from memory_svc.backend import Backend
from memory_svc.convert import etag_of
from memory_svc.embeddings import Vectors
from memory_svc.indexing import vector_bytes, vector_of
from memory_svc.procedural import models, validation
from memory_svc.procedural.convert import (
    rate,
    search_text,
    skill_from_row,
    skill_version_from_row,
    trajectory_from_row,
    workflow_from_row,
)
from memory_svc.procedural.indexing import ProceduralIndex, Upsert
from memory_svc.procedural.listing import list_page
from memory_svc.scopes import scope_key

__all__ = ["ProceduralStore", "public_columns"]

w = models.workflows
s = models.skills
sv = models.skill_versions
so = models.skill_outcomes
t = models.trajectories

_MAX_NOTES: Final = 4_000
_RETRIES: Final = 3


def public_columns(table: Table) -> list[Any]:
    """Every column but the embedding (1.5 kB a row)."""
    return [c for c in table.c if c.name != "embedding"]


def _check_etag(row: Any, etag: str, what: str) -> None:
    if etag and etag != etag_of(row.id, row.version):
        raise Aborted(
            f"the {what} changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={f"{what}_id": str(row.id)},
        )


class ProceduralStore:
    """Standard methods of workflows, skills and trajectories."""

    def __init__(
        self,
        backend: Backend,
        *,
        sessions: Callable[[], async_sessionmaker[AsyncSession]],
        index: ProceduralIndex,
    ) -> None:
        """Bind to the service's resources.

        Args:
            backend: The memory service's resources (embedders, clock).
            sessions: Returns the ``procedural`` schema's session factory (once started).
            index: The procedural index writer.
        """
        self._b = backend
        self._sessions = sessions
        self.index = index

    def clock(self) -> Any:
        """The service's current time."""
        return self._b.clock()

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory of the ``procedural`` schema."""
        return self._sessions()

    async def _embed(self, kind: str, values: dict[str, Any]) -> Vectors:
        vectors = await self.index.embed([search_text(kind, values)])
        vector: Vectors = vectors[0]
        return vector

    async def _insert(
        self, kind: str, table: Table, values: dict[str, Any], request_id: str | None
    ) -> tuple[Any, bool]:
        """Insert a row unless its request_id exists; returns (row, inserted)."""
        statement = (
            pg_insert(table)
            .values(**values)
            .on_conflict_do_nothing(
                index_elements=[table.c.tenant_id, table.c.request_id],
                index_where=table.c.request_id.is_not(None),
            )
            .returning(*public_columns(table))
        )
        async with transaction(self.sessions) as session:
            row = (await session.execute(statement)).one_or_none()
            if row is None:
                row = (
                    await session.execute(
                        select(*public_columns(table)).where(
                            table.c.tenant_id == values["tenant_id"],
                            table.c.request_id == request_id,
                        )
                    )
                ).one()
                return row, False
        return row, True

    async def _existing(self, table: Table, tenant_id: str, request_id: str | None) -> Any | None:
        if request_id is None:
            return None
        async with self.sessions() as session:
            return (
                await session.execute(
                    select(*public_columns(table)).where(
                        table.c.tenant_id == tenant_id, table.c.request_id == request_id
                    )
                )
            ).one_or_none()

    async def _get_row(self, table: Table, tenant_id: str, object_id: uuid.UUID) -> Any | None:
        async with self.sessions() as session:
            return (
                await session.execute(
                    select(*public_columns(table)).where(
                        table.c.tenant_id == tenant_id, table.c.id == object_id
                    )
                )
            ).one_or_none()

    async def _lock(
        self, session: AsyncSession, table: Table, tenant_id: str, object_id: uuid.UUID
    ) -> Any | None:
        return (
            await session.execute(
                select(table)
                .where(table.c.tenant_id == tenant_id, table.c.id == object_id)
                .with_for_update()
            )
        ).one_or_none()

    def _new_row(self, tenant_id: str, values: dict[str, Any], vector: Vectors) -> dict[str, Any]:
        now = self._b.clock()
        return {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "scope_key": scope_key(values["scope"]),
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "embedding": vector_bytes(vector),
            "embedding_model": self.index.model,
            "index_dirty": True,
            **values,
        }

    # ------------------------------------------------------------------ workflows

    async def create_workflow(
        self, tenant_id: str, request: procedural_service_pb2.CreateWorkflowRequest
    ) -> procedural_pb2.Workflow:
        """CreateWorkflow: idempotent on ``request_id``."""
        if not request.HasField("workflow"):
            raise InvalidArgument("workflow is required", field="workflow")
        new = validation.validate_new_workflow(request.workflow, prefix="workflow.")
        request_id = validation.validate_request_id(request.request_id)
        existing = await self._existing(w, tenant_id, request_id)
        if existing is not None:
            return workflow_from_row(existing)
        values = {
            "name": new.name,
            "description": new.description,
            "scope": new.scope,
            "steps": new.steps,
            "success_metrics": new.success_metrics,
            "metadata": new.metadata,
            "agent_id": new.agent_id,
            "request_id": request_id,
        }
        vector = await self._embed("workflow", values)
        row, inserted = await self._insert(
            "workflow", w, self._new_row(tenant_id, values, vector), request_id
        )
        if inserted:
            await self.index.apply(upserts=[Upsert("workflow", row, vector)])
        return workflow_from_row(row)

    async def get_workflow(self, tenant_id: str, workflow_id: str) -> procedural_pb2.Workflow:
        """GetWorkflow."""
        parsed = validation.parse_id(workflow_id, what="workflow")
        row = await self._get_row(w, tenant_id, parsed)
        if row is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        return workflow_from_row(row)

    async def list_workflows(
        self, tenant_id: str, request: procedural_service_pb2.ListWorkflowsRequest
    ) -> procedural_service_pb2.ListWorkflowsResponse:
        """ListWorkflows, newest first."""
        async with self.sessions() as session:
            page = await list_page(
                session,
                table=w,
                kind="workflow",
                tenant_id=tenant_id,
                filter_text=request.filter,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return procedural_service_pb2.ListWorkflowsResponse(
            workflows=[workflow_from_row(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    async def update_workflow(
        self, tenant_id: str, request: procedural_service_pb2.UpdateWorkflowRequest
    ) -> procedural_pb2.Workflow:
        """UpdateWorkflow (PATCH with update_mask and etag); re-embeds when the text changes."""
        body = request.workflow
        workflow_id = validation.parse_id(body.id, what="workflow", field="workflow.id")
        paths = validation.update_paths(
            body,
            list(request.update_mask.paths) if request.HasField("update_mask") else None,
            updatable=validation.WORKFLOW_UPDATABLE,
            field="workflow",
        )
        values: dict[str, Any] = {}
        if "name" in paths:
            values["name"] = validation.text_field(
                body.name, field="workflow.name", limit=validation.MAX_NAME, required=True
            )
        if "description" in paths:
            values["description"] = validation.text_field(
                body.description,
                field="workflow.description",
                limit=validation.MAX_TEXT,
                required=False,
            )
        if "steps" in paths:
            values["steps"] = validation.workflow_steps(body.steps, field="workflow.steps")
        if "success_metrics" in paths:
            values["success_metrics"] = validation.json_object(
                body.success_metrics, field="workflow.success_metrics"
            )
        if "metadata" in paths:
            values["metadata"] = validation.json_object(body.metadata, field="workflow.metadata")
        if "agent_id" in paths:
            values["agent_id"] = validation.agent_id(body.agent_id, field="workflow.agent_id")
        etag = request.etag or body.etag
        row = await self.update_searchable(
            "workflow", w, tenant_id, workflow_id, values, etag, scope=dict(body.scope)
        )
        return workflow_from_row(row)

    async def update_searchable(
        self,
        kind: str,
        table: Table,
        tenant_id: str,
        object_id: uuid.UUID,
        values: dict[str, Any],
        etag: str,
        *,
        scope: dict[str, str],
        on_locked: Callable[[AsyncSession, Any, dict[str, Any]], Any] | None = None,
    ) -> Any:
        """Apply validated changes: embed the new text first, then lock, check, write, index.

        If the row changes between the read that shaped the text and the lock, the text is
        recomputed (a few times at most, then ABORTED).
        """
        for _ in range(_RETRIES):
            current = await self._get_row(table, tenant_id, object_id)
            if current is None:
                raise NotFound(f"{kind} {str(object_id)!r} not found")
            # IMMUTABLE: the scope may be echoed back unchanged, not changed.
            if scope and scope != current.scope:
                raise InvalidArgument("scope cannot be changed", field=f"{kind}.scope")
            _check_etag(current, etag, kind)
            merged = {**dict(current._mapping), **values}
            reembed = (
                search_text(kind, merged) != search_text(kind, dict(current._mapping))
                or current.embedding_model != self.index.model
            )
            vector = await self._embed(kind, merged) if reembed else None
            async with transaction(self.sessions) as session:
                locked = await self._lock(session, table, tenant_id, object_id)
                if locked is None:
                    raise NotFound(f"{kind} {str(object_id)!r} not found")
                if locked.version != current.version:
                    continue
                changes = dict(values)
                if on_locked is not None:
                    changes = await on_locked(session, locked, changes)
                changes["updated_at"] = self._b.clock()
                changes["version"] = locked.version + 1
                changes["index_dirty"] = True
                if vector is not None:
                    changes["embedding"] = vector_bytes(vector)
                    changes["embedding_model"] = self.index.model
                row = (
                    await session.execute(
                        update(table)
                        .where(table.c.tenant_id == tenant_id, table.c.id == object_id)
                        .values(**changes)
                        .returning(*public_columns(table))
                    )
                ).one()
            if vector is None:
                vector = vector_of(locked.embedding)
            await self.index.apply(upserts=[Upsert(kind, row, vector)])
            return row
        raise Aborted(
            f"the {kind} is changing concurrently; retry", reason="CONCURRENT_MODIFICATION"
        )

    async def _delete(
        self, kind: str, table: Table, tenant_id: str, object_id: str, *, extra: Any = None
    ) -> None:
        parsed = validation.parse_id(object_id, what=kind)
        async with transaction(self.sessions) as session:
            gone = (
                await session.execute(
                    delete(table)
                    .where(table.c.tenant_id == tenant_id, table.c.id == parsed)
                    .returning(table.c.id)
                )
            ).one_or_none()
            if gone is None:
                raise NotFound(f"{kind} {object_id!r} not found")
            if extra is not None:
                await extra(session, parsed)
        await self.index.apply(deletes=[parsed])

    async def delete_workflow(self, tenant_id: str, workflow_id: str) -> None:
        """DeleteWorkflow."""
        await self._delete("workflow", w, tenant_id, workflow_id)

    async def record_workflow_usage(
        self, tenant_id: str, workflow_id: str
    ) -> procedural_pb2.Workflow:
        """RecordWorkflowUsage: one more use, now."""
        parsed = validation.parse_id(workflow_id, what="workflow")
        now = self._b.clock()
        async with transaction(self.sessions) as session:
            row = (
                await session.execute(
                    update(w)
                    .where(w.c.tenant_id == tenant_id, w.c.id == parsed)
                    .values(
                        usage_count=w.c.usage_count + 1,
                        last_used_at=now,
                        updated_at=now,
                        version=w.c.version + 1,
                    )
                    .returning(*public_columns(w))
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"workflow {workflow_id!r} not found")
        return workflow_from_row(row)

    # ------------------------------------------------------------------ skills

    async def create_skill(
        self, tenant_id: str, request: procedural_service_pb2.CreateSkillRequest
    ) -> procedural_pb2.Skill:
        """CreateSkill (version 1): idempotent on ``request_id``."""
        if not request.HasField("skill"):
            raise InvalidArgument("skill is required", field="skill")
        new = validation.validate_new_skill(request.skill, prefix="skill.")
        request_id = validation.validate_request_id(request.request_id)
        existing = await self._existing(s, tenant_id, request_id)
        if existing is not None:
            return skill_from_row(existing)
        return skill_from_row(
            await self.insert_skill(tenant_id, new, request_id=request_id, source_candidate_id="")
        )

    async def insert_skill(
        self,
        tenant_id: str,
        new: validation.NewSkill,
        *,
        request_id: str | None,
        source_candidate_id: str,
        session: AsyncSession | None = None,
        vector: Vectors | None = None,
    ) -> Any:
        """Insert a skill with its version 1 (in ``session`` when given) and index it.

        With ``session`` the caller commits and then calls :meth:`ProceduralIndex.apply`.
        """
        values = {
            "name": new.name,
            "description": new.description,
            "skill_type": new.skill_type,
            "implementation": new.implementation,
            "scope": new.scope,
            "metadata": new.metadata,
            "agent_id": new.agent_id,
            "request_id": request_id,
            "source_candidate_id": source_candidate_id,
            "skill_version": 1,
        }
        if vector is None:
            vector = await self._embed("skill", values)
        row_values = self._new_row(tenant_id, values, vector)
        if session is not None:
            inserted = (
                await session.execute(
                    pg_insert(s).values(**row_values).returning(*public_columns(s))
                )
            ).one()
            await self._insert_version(session, inserted)
            return inserted
        async with transaction(self.sessions) as own:
            row = (
                await own.execute(
                    pg_insert(s)
                    .values(**row_values)
                    .on_conflict_do_nothing(
                        index_elements=[s.c.tenant_id, s.c.request_id],
                        index_where=s.c.request_id.is_not(None),
                    )
                    .returning(*public_columns(s))
                )
            ).one_or_none()
            if row is None:
                # A concurrent retry with the same request_id won the insert.
                return (
                    await own.execute(
                        select(*public_columns(s)).where(
                            s.c.tenant_id == tenant_id, s.c.request_id == request_id
                        )
                    )
                ).one()
            await self._insert_version(own, row)
        await self.index.apply(upserts=[Upsert("skill", row, vector)])
        return row

    async def _insert_version(self, session: AsyncSession, row: Any) -> None:
        await session.execute(
            pg_insert(sv).values(
                tenant_id=row.tenant_id,
                skill_id=row.id,
                version=row.skill_version,
                name=row.name,
                description=row.description,
                skill_type=row.skill_type,
                implementation=row.implementation,
                success_count=0,
                failure_count=0,
                created_at=row.updated_at,
            )
        )

    async def get_skill(self, tenant_id: str, skill_id: str) -> procedural_pb2.Skill:
        """GetSkill at its current version."""
        parsed = validation.parse_id(skill_id, what="skill")
        row = await self._get_row(s, tenant_id, parsed)
        if row is None:
            raise NotFound(f"skill {skill_id!r} not found")
        return skill_from_row(row)

    async def list_skills(
        self, tenant_id: str, request: procedural_service_pb2.ListSkillsRequest
    ) -> procedural_service_pb2.ListSkillsResponse:
        """ListSkills, newest first, with the ``skill_type`` / ``agent_id`` shorthands."""
        extra = None
        if request.skill_type:
            validation.skill_type(request.skill_type, field="skill_type")
            extra = s.c.skill_type == request.skill_type
        if request.agent_id:
            by_agent = s.c.agent_id == request.agent_id
            extra = by_agent if extra is None else extra & by_agent
        async with self.sessions() as session:
            page = await list_page(
                session,
                table=s,
                kind="skill",
                tenant_id=tenant_id,
                filter_text=request.filter,
                page_size=request.page_size,
                page_token=request.page_token,
                extra=extra,
                extra_params={"skill_type": request.skill_type, "agent_id": request.agent_id},
            )
        return procedural_service_pb2.ListSkillsResponse(
            skills=[skill_from_row(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )

    async def update_skill(
        self, tenant_id: str, request: procedural_service_pb2.UpdateSkillRequest
    ) -> procedural_pb2.Skill:
        """UpdateSkill: a change of name, description, type or implementation makes a new
        version (with outcomes counted afresh); metadata and agent changes do not."""
        body = request.skill
        skill_id = validation.parse_id(body.id, what="skill", field="skill.id")
        paths = validation.update_paths(
            body,
            list(request.update_mask.paths) if request.HasField("update_mask") else None,
            updatable=validation.SKILL_UPDATABLE,
            field="skill",
        )
        values: dict[str, Any] = {}
        if "name" in paths:
            values["name"] = validation.text_field(
                body.name, field="skill.name", limit=validation.MAX_NAME, required=True
            )
        if "description" in paths:
            values["description"] = validation.text_field(
                body.description,
                field="skill.description",
                limit=validation.MAX_TEXT,
                required=False,
            )
        if "skill_type" in paths:
            values["skill_type"] = validation.skill_type(body.skill_type, field="skill.skill_type")
        if "implementation" in paths:
            values["implementation"] = validation.text_field(
                body.implementation,
                field="skill.implementation",
                limit=validation.MAX_IMPLEMENTATION,
                required=True,
            )
        if "metadata" in paths:
            values["metadata"] = validation.json_object(body.metadata, field="skill.metadata")
        if "agent_id" in paths:
            values["agent_id"] = validation.agent_id(body.agent_id, field="skill.agent_id")

        async def new_version(
            session: AsyncSession, locked: Any, changes: dict[str, Any]
        ) -> dict[str, Any]:
            content_changed = any(
                name in changes and changes[name] != getattr(locked, name)
                for name in validation.SKILL_CONTENT
            )
            if not content_changed:
                return changes
            version = locked.skill_version + 1
            merged = {
                name: changes.get(name, getattr(locked, name)) for name in validation.SKILL_CONTENT
            }
            await session.execute(
                pg_insert(sv).values(
                    tenant_id=tenant_id,
                    skill_id=locked.id,
                    version=version,
                    success_count=0,
                    failure_count=0,
                    created_at=self._b.clock(),
                    **merged,
                )
            )
            return {
                **changes,
                "skill_version": version,
                "success_count": 0,
                "failure_count": 0,
                "success_rate": 0.0,
            }

        row = await self.update_searchable(
            "skill",
            s,
            tenant_id,
            skill_id,
            values,
            request.etag or body.etag,
            scope=dict(body.scope),
            on_locked=new_version,
        )
        return skill_from_row(row)

    async def delete_skill(self, tenant_id: str, skill_id: str) -> None:
        """DeleteSkill, with its versions and outcomes."""

        async def cascade(session: AsyncSession, parsed: uuid.UUID) -> None:
            await session.execute(
                delete(sv).where(sv.c.tenant_id == tenant_id, sv.c.skill_id == parsed)
            )
            await session.execute(
                delete(so).where(so.c.tenant_id == tenant_id, so.c.skill_id == parsed)
            )

        await self._delete("skill", s, tenant_id, skill_id, extra=cascade)

    async def list_skill_versions(
        self, tenant_id: str, request: procedural_service_pb2.ListSkillVersionsRequest
    ) -> procedural_service_pb2.ListSkillVersionsResponse:
        """ListSkillVersions, newest first."""
        from ciq_runtime.pagination import encode_page_token, page_request

        skill_id = validation.parse_id(request.skill_id, what="skill", field="skill_id")
        params = {"skill_id": str(skill_id)}
        page = page_request(
            page_size=request.page_size, page_token=request.page_token, params=params
        )
        statement = select(sv).where(sv.c.tenant_id == tenant_id, sv.c.skill_id == skill_id)
        if page.after is not None:
            if len(page.after) != 1 or not isinstance(page.after[0], int):
                raise InvalidArgument("page_token is malformed", field="page_token")
            statement = statement.where(sv.c.version < page.after[0])
        statement = statement.order_by(sv.c.version.desc()).limit(page.size + 1)
        async with self.sessions() as session:
            rows = (await session.execute(statement)).all()
        if not rows and page.after is None:
            raise NotFound(f"skill {request.skill_id!r} not found")
        response = procedural_service_pb2.ListSkillVersionsResponse(
            versions=[skill_version_from_row(row) for row in rows[: page.size]]
        )
        if len(rows) > page.size:
            response.next_page_token = encode_page_token(
                last_sort_key=[rows[page.size - 1].version], params=params
            )
        return response

    async def get_skill_version(
        self, tenant_id: str, request: procedural_service_pb2.GetSkillVersionRequest
    ) -> procedural_pb2.SkillVersion:
        """GetSkillVersion."""
        skill_id = validation.parse_id(request.skill_id, what="skill", field="skill_id")
        if request.version <= 0:
            raise InvalidArgument("version must be positive", field="version")
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(sv).where(
                        sv.c.tenant_id == tenant_id,
                        sv.c.skill_id == skill_id,
                        sv.c.version == request.version,
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"version {request.version} of skill {request.skill_id!r} not found")
        return skill_version_from_row(row)

    async def record_skill_outcome(
        self, tenant_id: str, request: procedural_service_pb2.RecordSkillOutcomeRequest
    ) -> procedural_pb2.Skill:
        """RecordSkillOutcome: counts the outcome for the current version, updates the rate."""
        skill_id = validation.parse_id(request.id, what="skill")
        if not request.HasField("success"):
            raise InvalidArgument(
                "success is required: true for a successful use, false for a failed one",
                field="success",
            )
        notes = validation.text_field(
            request.notes, field="notes", limit=_MAX_NOTES, required=False
        )
        trajectory_id = ""
        if request.trajectory_id:
            parsed = validation.parse_id(
                request.trajectory_id, what="trajectory", field="trajectory_id"
            )
            if await self._get_row(t, tenant_id, parsed) is None:
                raise NotFound(f"trajectory {request.trajectory_id!r} not found")
            trajectory_id = str(parsed)
        now = self._b.clock()
        success = request.success
        async with transaction(self.sessions) as session:
            locked = await self._lock(session, s, tenant_id, skill_id)
            if locked is None:
                raise NotFound(f"skill {request.id!r} not found")
            successes = locked.success_count + (1 if success else 0)
            failures = locked.failure_count + (0 if success else 1)
            row = (
                await session.execute(
                    update(s)
                    .where(s.c.tenant_id == tenant_id, s.c.id == skill_id)
                    .values(
                        success_count=successes,
                        failure_count=failures,
                        success_rate=rate(successes, failures),
                        updated_at=now,
                        version=locked.version + 1,
                        # The index holds the rate (min_success_rate filters there).
                        index_dirty=True,
                    )
                    .returning(*public_columns(s))
                )
            ).one()
            column = sv.c.success_count if success else sv.c.failure_count
            await session.execute(
                update(sv)
                .where(sv.c.skill_id == skill_id, sv.c.version == locked.skill_version)
                .values({column.name: column + 1})
            )
            await session.execute(
                pg_insert(so).values(
                    id=uuid.uuid4(),
                    tenant_id=tenant_id,
                    skill_id=skill_id,
                    version=locked.skill_version,
                    success=success,
                    notes=notes,
                    trajectory_id=trajectory_id,
                    created_at=now,
                )
            )
        if locked.embedding is not None and locked.embedding_model == self.index.model:
            await self.index.apply(upserts=[Upsert("skill", row, vector_of(locked.embedding))])
        return skill_from_row(row)

    # ------------------------------------------------------------------ trajectories

    async def create_trajectory(
        self, tenant_id: str, request: procedural_service_pb2.CreateTrajectoryRequest
    ) -> procedural_pb2.Trajectory:
        """CreateTrajectory: idempotent on ``request_id``."""
        if not request.HasField("trajectory"):
            raise InvalidArgument("trajectory is required", field="trajectory")
        new = validation.validate_new_trajectory(request.trajectory, prefix="trajectory.")
        request_id = validation.validate_request_id(request.request_id)
        existing = await self._existing(t, tenant_id, request_id)
        if existing is not None:
            return trajectory_from_row(existing)
        values = {
            "agent_id": new.agent_id,
            "task_description": new.task_description,
            "steps": new.steps,
            "outcome": new.outcome,
            "learning_points": new.learning_points,
            "scope": new.scope,
            "session_id": new.session_id,
            "metadata": new.metadata,
            "request_id": request_id,
        }
        vector = await self._embed("trajectory", values)
        row, inserted = await self._insert(
            "trajectory", t, self._new_row(tenant_id, values, vector), request_id
        )
        if inserted:
            await self.index.apply(upserts=[Upsert("trajectory", row, vector)])
        return trajectory_from_row(row)

    async def get_trajectory(self, tenant_id: str, trajectory_id: str) -> procedural_pb2.Trajectory:
        """GetTrajectory."""
        parsed = validation.parse_id(trajectory_id, what="trajectory")
        row = await self._get_row(t, tenant_id, parsed)
        if row is None:
            raise NotFound(f"trajectory {trajectory_id!r} not found")
        return trajectory_from_row(row)

    async def list_trajectories(
        self, tenant_id: str, request: procedural_service_pb2.ListTrajectoriesRequest
    ) -> procedural_service_pb2.ListTrajectoriesResponse:
        """ListTrajectories, newest first."""
        async with self.sessions() as session:
            page = await list_page(
                session,
                table=t,
                kind="trajectory",
                tenant_id=tenant_id,
                filter_text=request.filter,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return procedural_service_pb2.ListTrajectoriesResponse(
            trajectories=[trajectory_from_row(row) for row in page.rows],
            next_page_token=page.next_page_token,
        )
