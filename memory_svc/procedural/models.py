"""Tables of procedural memory (Postgres schema ``procedural``, its own Alembic history).

The procedural service runs inside the memory process and shares its embedders and vector
index, but owns its tables: workflows, skills with their versions and recorded outcomes,
trajectories and the candidates learning proposes. Every table carries ``tenant_id`` and every
query filters on it.

Postgres is the source of truth: each searchable row (workflow, skill, trajectory) keeps its
embedding, so the index collection ``procedural_<model>_<dim>`` can be rebuilt from these
tables at any time (:meth:`memory_svc.procedural.indexing.ProceduralIndex.rebuild`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

SCHEMA = "procedural"
VERSION_TABLE = "alembic_version_procedural"

metadata = MetaData(schema=SCHEMA)

_OBJ = text("'{}'::jsonb")
_ARR = text("'[]'::jsonb")


def _searchable() -> list[Column[object]]:
    """Columns every searchable table has: its embedding and the index bookkeeping."""
    return [
        # float32 little-endian vector of the row's search text under `embedding_model`.
        Column("embedding", LargeBinary, nullable=True),
        Column("embedding_model", Text, nullable=False, server_default=""),
        # Set in the write's transaction, cleared once the index holds the change; the repair
        # loop re-applies rows left dirty by a failed index write or a crash.
        Column("index_dirty", Boolean, nullable=False, server_default="true"),
    ]


workflows = Table(
    "workflows",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("scope", JSONB, nullable=False, server_default=_OBJ),
    Column("scope_key", Text, nullable=False),
    Column("agent_id", Text, nullable=False, server_default=""),
    # WorkflowStep messages as proto JSON, in order.
    Column("steps", JSONB, nullable=False, server_default=_ARR),
    Column("success_metrics", JSONB, nullable=False, server_default=_OBJ),
    Column("metadata", JSONB, nullable=False, server_default=_OBJ),
    Column("usage_count", BigInteger, nullable=False, server_default="0"),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Bumped by every change (etag).
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("request_id", Text, nullable=True),
    *_searchable(),
    Index("workflows_tenant_created_idx", "tenant_id", "created_at", "id"),
    Index("workflows_tenant_scope_idx", "tenant_id", "scope_key"),
    Index(
        "workflows_tenant_request_id_key",
        "tenant_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index("workflows_dirty_idx", "updated_at", postgresql_where=text("index_dirty")),
)

skills = Table(
    "skills",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("skill_type", Text, nullable=False),
    Column("implementation", Text, nullable=False),
    Column("scope", JSONB, nullable=False, server_default=_OBJ),
    Column("scope_key", Text, nullable=False),
    Column("agent_id", Text, nullable=False, server_default=""),
    Column("metadata", JSONB, nullable=False, server_default=_OBJ),
    # The current skill version (content); `version` below counts every change (etag).
    Column("skill_version", Integer, nullable=False, server_default="1"),
    # Outcomes of the current skill version.
    Column("success_count", BigInteger, nullable=False, server_default="0"),
    Column("failure_count", BigInteger, nullable=False, server_default="0"),
    Column("success_rate", Float, nullable=False, server_default="0"),
    Column("source_candidate_id", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("request_id", Text, nullable=True),
    *_searchable(),
    Index("skills_tenant_created_idx", "tenant_id", "created_at", "id"),
    Index("skills_tenant_scope_idx", "tenant_id", "scope_key"),
    Index("skills_tenant_type_rate_idx", "tenant_id", "skill_type", "success_rate"),
    Index(
        "skills_tenant_request_id_key",
        "tenant_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index("skills_dirty_idx", "updated_at", postgresql_where=text("index_dirty")),
)

skill_versions = Table(
    "skill_versions",
    metadata,
    Column("tenant_id", Text, nullable=False),
    # No foreign key: deleting a skill deletes its versions in the same transaction.
    Column("skill_id", UUID(as_uuid=True), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("skill_type", Text, nullable=False),
    Column("implementation", Text, nullable=False),
    Column("success_count", BigInteger, nullable=False, server_default="0"),
    Column("failure_count", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("skill_id", "version", name="skill_versions_pkey"),
    Index("skill_versions_tenant_skill_idx", "tenant_id", "skill_id", "version"),
)

skill_outcomes = Table(
    "skill_outcomes",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("skill_id", UUID(as_uuid=True), nullable=False),
    Column("version", Integer, nullable=False),
    Column("success", Boolean, nullable=False),
    Column("notes", Text, nullable=False, server_default=""),
    Column("trajectory_id", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("skill_outcomes_tenant_skill_idx", "tenant_id", "skill_id", "created_at"),
)

trajectories = Table(
    "trajectories",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("agent_id", Text, nullable=False),
    Column("task_description", Text, nullable=False),
    # TrajectoryStep messages as proto JSON, in order.
    Column("steps", JSONB, nullable=False, server_default=_ARR),
    Column("outcome", Text, nullable=False),
    Column("learning_points", JSONB, nullable=False, server_default=_ARR),
    Column("scope", JSONB, nullable=False, server_default=_OBJ),
    Column("scope_key", Text, nullable=False),
    Column("session_id", Text, nullable=False, server_default=""),
    Column("metadata", JSONB, nullable=False, server_default=_OBJ),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("request_id", Text, nullable=True),
    *_searchable(),
    Index("trajectories_tenant_created_idx", "tenant_id", "created_at", "id"),
    Index("trajectories_tenant_scope_created_idx", "tenant_id", "scope_key", "created_at"),
    Index(
        "trajectories_tenant_request_id_key",
        "tenant_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index("trajectories_dirty_idx", "updated_at", postgresql_where=text("index_dirty")),
)

candidates = Table(
    "skill_candidates",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    # "skill", "workflow_update" or "learning_point".
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=False, server_default=""),
    Column("description", Text, nullable=False, server_default=""),
    Column("skill_type", Text, nullable=False, server_default=""),
    Column("implementation", Text, nullable=False, server_default=""),
    Column("target_workflow_id", Text, nullable=False, server_default=""),
    Column("proposed_steps", JSONB, nullable=False, server_default=_ARR),
    Column("learning_points", JSONB, nullable=False, server_default=_ARR),
    Column("evidence_trajectory_ids", JSONB, nullable=False, server_default=_ARR),
    Column("rationale", Text, nullable=False, server_default=""),
    Column("confidence", Float, nullable=False, server_default="0"),
    # "proposed", "promoted" or "rejected".
    Column("state", Text, nullable=False, server_default="proposed"),
    Column("operation_name", Text, nullable=False, server_default=""),
    Column("promoted_skill_id", Text, nullable=False, server_default=""),
    Column("reject_reason", Text, nullable=False, server_default=""),
    Column("scope", JSONB, nullable=False, server_default=_OBJ),
    Column("scope_key", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Position of the proposal within its operation: storing an operation's candidates twice
    # (a redelivered job) finds the first copy instead of duplicating it.
    Column("ordinal", Integer, nullable=False, server_default="0"),
    Index("skill_candidates_tenant_created_idx", "tenant_id", "created_at", "id"),
    Index(
        "skill_candidates_operation_ordinal_key",
        "tenant_id",
        "operation_name",
        "ordinal",
        unique=True,
        postgresql_where=text("operation_name <> ''"),
    ),
)
