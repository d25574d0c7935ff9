"""``python -m ciq_runtime.migrate`` (the Helm chart's migration Job) against real Postgres.

Each test migrates a database of its own, so the schemas other tests migrate in the session's
database are never touched and "fresh database" really means fresh.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from ciq_runtime.db import create_engine, current_revision, migration_head
from ciq_runtime.migrate import MigrationTarget, targets

REPO = Path(__file__).resolve().parents[3]
# Every schema the services own, whatever order MODELS_MODULES lists them in.
EXPECTED_SCHEMAS = {"sessions", "auth", "memory", "procedural", "extraction"}

pytestmark = pytest.mark.timeout(180)


def run_cli(args: Sequence[str], database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env["CONTEXTIQ_LOG_FORMAT"] = "text"
    return subprocess.run(
        [sys.executable, "-m", "ciq_runtime.migrate", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def plain_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def fresh_db(pg_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database on the session's server; dropped afterwards."""
    name = f"ciq_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(plain_dsn(pg_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def revisions(url: str, chosen: Sequence[MigrationTarget]) -> dict[str, str | None]:
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        return {
            t.schema: await current_revision(engine, schema=t.schema, version_table=t.version_table)
            for t in chosen
        }
    finally:
        await engine.dispose()


def test_targets_cover_every_service_schema() -> None:
    found = targets()
    assert {t.schema for t in found} == EXPECTED_SCHEMAS
    for target in found:
        assert (target.script_location / "env.py").is_file(), target
        assert target.version_table.startswith("alembic_version_"), target
        # One head per history, else `upgrade head` is ambiguous.
        assert migration_head(target.script_location)


async def test_migrates_every_schema_to_its_head_and_is_idempotent(fresh_db: str) -> None:
    every = targets()
    heads = {t.schema: migration_head(t.script_location) for t in every}
    assert set((await revisions(fresh_db, every)).values()) == {None}

    first = run_cli([], fresh_db)
    assert first.returncode == 0, first.stderr
    assert await revisions(fresh_db, every) == heads

    again = run_cli([], fresh_db)
    assert again.returncode == 0, again.stderr
    assert await revisions(fresh_db, every) == heads


async def test_migrates_only_the_named_schemas(fresh_db: str) -> None:
    every = {t.schema: t for t in targets()}
    done = run_cli(["extraction", "auth"], fresh_db)
    assert done.returncode == 0, done.stderr
    found = await revisions(fresh_db, list(every.values()))
    for schema, revision in found.items():
        if schema in ("extraction", "auth"):
            assert revision == migration_head(every[schema].script_location)
        else:
            assert revision is None, schema


def test_unknown_schema_is_a_one_line_error(pg_url: str) -> None:
    done = run_cli(["nope"], pg_url)
    assert done.returncode == 1
    assert done.stderr.strip() == "contextiq: error: unknown schema(s) nope"


def test_missing_database_url_is_a_one_line_error() -> None:
    done = run_cli([], None)
    assert done.returncode == 1
    assert done.stderr.startswith("contextiq: error: DATABASE_URL is not set")
    assert "Traceback" not in done.stderr


def test_unreachable_database_fails_without_leaking_the_password() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    done = run_cli([], "postgresql://ciq:s3cret-pass@127.0.0.1:1/contextiq")
    assert done.returncode == 1
    assert done.stderr.startswith("contextiq: error: migration failed:")
    assert "s3cret-pass" not in done.stderr
    assert "Traceback" not in done.stderr
