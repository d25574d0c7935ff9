"""Memory generation: the job outbox, applied results and per-session watermarks.

Revision ID: memory_0003
Revises: memory_0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "memory_0003"
down_revision: str | None = "memory_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "memory"
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the outbox, results and watermarks tables."""
    op.create_table(
        "generation_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("operation_name", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column(
            "headers", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("operation_name", name="generation_outbox_operation_key"),
        schema=SCHEMA,
    )
    op.create_index(
        "generation_outbox_due_idx",
        "generation_outbox",
        ["next_attempt_at", "id"],
        schema=SCHEMA,
    )
    op.create_table(
        "generation_results",
        sa.Column("operation_name", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "generation_watermarks",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("bank_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("scope_key", sa.Text(), nullable=False),
        sa.Column("scope", postgresql.JSONB(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("operation_name", sa.Text(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "bank_id", "session_id", "scope_key", name="generation_watermarks_pkey"
        ),
        schema=SCHEMA,
    )


def downgrade() -> None:
    """Drop the generation tables."""
    for table in ("generation_watermarks", "generation_results", "generation_outbox"):
        op.drop_table(table, schema=SCHEMA)
