"""Baseline of the sessions schema.

The schema itself is created by ciq_runtime.db.run_migrations before Alembic runs; the
service's tables arrive in later revisions.

Revision ID: sessions_0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

revision: str = "sessions_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to create yet."""


def downgrade() -> None:
    """Nothing to drop."""
