"""Sessions, their events, and the state shared by an app's or a user's sessions.

Revision ID: sessions_0002
Revises: sessions_0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "sessions_0002"
down_revision: str | None = "sessions_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "sessions"
_EMPTY = sa.text("'{}'::jsonb")


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "sessions",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("app_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("scope", postgresql.JSONB(), nullable=False, server_default=_EMPTY),
        sa.Column("state", postgresql.JSONB(), nullable=False, server_default=_EMPTY),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default=_EMPTY),
        sa.Column("labels", postgresql.JSONB(), nullable=False, server_default=_EMPTY),
        sa.Column("parent_session_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("event_count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_event_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="sessions_pkey"),
        schema=SCHEMA,
    )
    # Every append rewrites its session's row; free space on the page lets Postgres do that as
    # a HOT update (no index entries written), which the indexes below are chosen to allow.
    op.execute(f"ALTER TABLE {SCHEMA}.sessions SET (fillfactor = 70)")
    op.create_index(
        "sessions_tenant_created_idx",
        "sessions",
        ["tenant_id", "created_at", "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "sessions_tenant_user_created_idx",
        "sessions",
        ["tenant_id", "user_id", "created_at"],
        schema=SCHEMA,
    )
    op.create_index(
        "sessions_tenant_app_user_idx",
        "sessions",
        ["tenant_id", "app_name", "user_id"],
        schema=SCHEMA,
    )
    op.create_index(
        "sessions_tenant_parent_idx",
        "sessions",
        ["tenant_id", "parent_session_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("parent_session_id IS NOT NULL"),
    )
    op.create_index(
        "sessions_tenant_request_id_key",
        "sessions",
        ["tenant_id", "request_id"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    )
    op.create_index(
        "sessions_expires_at_idx",
        "sessions",
        ["expires_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )

    op.create_table(
        "events",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("session_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("agent_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("invocation_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("branch", sa.Text(), nullable=False, server_default=""),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "session_id", "sequence", name="events_pkey"),
        schema=SCHEMA,
    )
    # Payloads are protobuf bytes, already compact: compressing them costs CPU on every read
    # for little space.
    op.execute(f"ALTER TABLE {SCHEMA}.events ALTER COLUMN payload SET STORAGE EXTERNAL")
    op.create_index(
        "events_session_event_id_key",
        "events",
        ["tenant_id", "session_id", "id"],
        unique=True,
        schema=SCHEMA,
    )
    op.create_index(
        "events_session_timestamp_idx",
        "events",
        ["tenant_id", "session_id", "timestamp"],
        schema=SCHEMA,
    )

    op.create_table(
        "app_state",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("app_name", sa.Text(), nullable=False),
        sa.Column("state", postgresql.JSONB(), nullable=False, server_default=_EMPTY),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "app_name", name="app_state_pkey"),
        schema=SCHEMA,
    )
    op.create_table(
        "user_state",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("app_name", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("state", postgresql.JSONB(), nullable=False, server_default=_EMPTY),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "app_name", "user_id", name="user_state_pkey"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the tables (their indexes go with them)."""
    op.drop_table("user_state", schema=SCHEMA)
    op.drop_table("app_state", schema=SCHEMA)
    op.drop_table("events", schema=SCHEMA)
    op.drop_table("sessions", schema=SCHEMA)
