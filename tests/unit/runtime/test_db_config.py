"""Database helpers that need no server: engine configuration and migration heads."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciq_runtime.db import create_engine, migration_head
from ciq_runtime.settings import ConfigError, Settings


def write_revision(versions: Path, revision: str, down: str | None) -> None:
    versions.mkdir(parents=True, exist_ok=True)
    (versions / f"{revision}.py").write_text(
        f"revision = {revision!r}\n"
        f"down_revision = {down!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n    pass\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


async def test_engine_from_settings_uses_asyncpg_and_pool_sizes() -> None:
    settings = Settings(
        service_name="sessions",
        database_url="postgres://u:p@db.invalid:5432/ciq",
        db_pool_size=3,
        db_max_overflow=4,
    )
    engine = create_engine(settings)
    try:
        assert engine.url.drivername == "postgresql+asyncpg"
        assert engine.url.host == "db.invalid"
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
        assert engine.pool._max_overflow == 4  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_engine_from_url_keeps_query_parameters() -> None:
    engine = create_engine("postgresql://u@/ciq?host=/tmp/sock", pool_size=1, max_overflow=0)
    try:
        assert engine.url.drivername == "postgresql+asyncpg"
        assert engine.url.query == {"host": "/tmp/sock"}
    finally:
        await engine.dispose()


def test_engine_needs_a_database_url() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        create_engine(Settings(service_name="x"))


def test_migration_head_follows_the_chain(tmp_path: Path) -> None:
    write_revision(tmp_path / "versions", "a1", None)
    write_revision(tmp_path / "versions", "b2", "a1")
    assert migration_head(tmp_path) == "b2"


def test_two_heads_are_refused(tmp_path: Path) -> None:
    write_revision(tmp_path / "versions", "a1", None)
    write_revision(tmp_path / "versions", "b2", "a1")
    write_revision(tmp_path / "versions", "c3", "a1")
    with pytest.raises(RuntimeError, match="exactly one migration head, found 2"):
        migration_head(tmp_path)
