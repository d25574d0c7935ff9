"""Dead letters of the job worker.

Revision ID: extraction_0002
Revises: extraction_0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "extraction_0002"
down_revision: str | None = "extraction_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "extraction"
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``dead_letters``."""
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("msg_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("stream_sequence", sa.BigInteger(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("error_status", sa.LargeBinary(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("operation_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("tenant_id", sa.Text(), nullable=False, server_default=""),
        sa.Column("operation_failed", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("published_at", _TS, nullable=True),
        sa.Column("failed_at", _TS, nullable=False),
        sa.Column("replay_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("replayed_at", _TS, nullable=True),
        schema=SCHEMA,
    )
    op.create_index("dead_letters_failed_at_idx", "dead_letters", ["failed_at"], schema=SCHEMA)
    op.create_index("dead_letters_operation_idx", "dead_letters", ["operation_name"], schema=SCHEMA)


def downgrade() -> None:
    """Drop ``dead_letters``."""
    op.drop_table("dead_letters", schema=SCHEMA)
