"""Memories, their revisions, memory banks and long-running operations.

Revision ID: memory_0002
Revises: memory_0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "memory_0002"
down_revision: str | None = "memory_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memory"
_OBJ = sa.text("'{}'::jsonb")
_ARR = sa.text("'[]'::jsonb")
_UUID = postgresql.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "memories",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("bank_id", sa.Text(), nullable=False),
        sa.Column("scope", postgresql.JSONB(), nullable=False),
        sa.Column("scope_key", sa.Text(), nullable=False),
        sa.Column("fact", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False, server_default=""),
        sa.Column("confidence", sa.Float(), nullable=False, server_default="1"),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=_OBJ),
        sa.Column("source_session_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("source_event_ids", postgresql.JSONB(), nullable=False, server_default=_ARR),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("deleted_at", _TS, nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
        sa.Column("revision_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embedding_model", sa.Text(), nullable=False, server_default=""),
        sa.Column("index_dirty", sa.Boolean(), nullable=False, server_default="true"),
        schema=SCHEMA,
    )
    op.create_index(
        "memories_tenant_bank_scope_updated_idx",
        "memories",
        ["tenant_id", "bank_id", "scope_key", "updated_at"],
        schema=SCHEMA,
    )
    op.create_index(
        "memories_tenant_bank_updated_idx",
        "memories",
        ["tenant_id", "bank_id", "updated_at", "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "memories_tenant_bank_created_idx",
        "memories",
        ["tenant_id", "bank_id", "created_at", "id"],
        schema=SCHEMA,
    )
    # Inclusive scope match (scope @> query) and scope.KEY filters use containment.
    op.create_index(
        "memories_scope_gin_idx", "memories", ["scope"], postgresql_using="gin", schema=SCHEMA
    )
    op.create_index(
        "memories_tenant_request_id_key",
        "memories",
        ["tenant_id", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
        schema=SCHEMA,
    )
    op.create_index(
        "memories_expires_at_idx",
        "memories",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL AND deleted_at IS NULL"),
        schema=SCHEMA,
    )
    op.create_index(
        "memories_dirty_idx",
        "memories",
        ["updated_at"],
        postgresql_where=sa.text("index_dirty"),
        schema=SCHEMA,
    )

    op.create_table(
        "memory_revisions",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("memory_id", _UUID, nullable=False),
        sa.Column("bank_id", sa.Text(), nullable=False),
        sa.Column("scope", postgresql.JSONB(), nullable=False),
        sa.Column("scope_key", sa.Text(), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("fact", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False, server_default=""),
        sa.Column("confidence", sa.Float(), nullable=False, server_default="1"),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=_OBJ),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("source_session_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("source_event_ids", postgresql.JSONB(), nullable=False, server_default=_ARR),
        sa.Column("operation_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("extracted_memories", postgresql.JSONB(), nullable=False, server_default=_ARR),
        sa.Column("rolled_back_to", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("memory_created_at", _TS, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("memory_id", "revision_number", name="memory_revisions_number_key"),
        schema=SCHEMA,
    )
    op.create_index(
        "memory_revisions_tenant_memory_idx",
        "memory_revisions",
        ["tenant_id", "memory_id", "revision_number"],
        schema=SCHEMA,
    )
    op.create_index(
        "memory_revisions_tenant_bank_scope_created_idx",
        "memory_revisions",
        ["tenant_id", "bank_id", "scope_key", "created_at"],
        schema=SCHEMA,
    )
    op.create_index(
        "memory_revisions_tenant_bank_created_idx",
        "memory_revisions",
        ["tenant_id", "bank_id", "created_at"],
        schema=SCHEMA,
    )

    op.create_table(
        "memory_banks",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("config", postgresql.JSONB(), nullable=False, server_default=_OBJ),
        sa.Column("embedding_model", sa.Text(), nullable=False),
        sa.Column("embedding_dimension", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("indexed_model", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="memory_banks_pkey"),
        schema=SCHEMA,
    )

    op.create_table(
        "operations",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("bank_id", sa.Text(), nullable=False, server_default="default"),
        sa.Column("done", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("metadata", sa.LargeBinary(), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("error", sa.LargeBinary(), nullable=True),
        sa.Column("request", sa.LargeBinary(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "operations_tenant_created_idx",
        "operations",
        ["tenant_id", "created_at", "name"],
        schema=SCHEMA,
    )
    op.create_index(
        "operations_tenant_request_id_key",
        "operations",
        ["tenant_id", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
        schema=SCHEMA,
    )
    op.create_index(
        "operations_running_idx",
        "operations",
        ["kind"],
        postgresql_where=sa.text("NOT done"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the four tables."""
    for table in ("operations", "memory_banks", "memory_revisions", "memories"):
        op.drop_table(table, schema=SCHEMA)
