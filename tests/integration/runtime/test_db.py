"""Database helpers against the session's real Postgres."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ciq_runtime.db import (
    create_engine,
    current_revision,
    migration_head,
    ping,
    run_migrations,
    session_factory,
    transaction,
)
from ciq_runtime.errors import Unavailable


def unique_schema() -> str:
    # The database is shared by the whole session: each test works in its own schema.
    return f"rt_{uuid.uuid4().hex[:10]}"


def write_migrations(root: Path, *, schema: str, version_table: str) -> Path:
    """A service's migrations folder: env.py through alembic_env_run, two revisions."""
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(
        textwrap.dedent(
            f"""
            import sqlalchemy as sa

            from ciq_runtime.db import alembic_env_run

            alembic_env_run(
                target_metadata=sa.MetaData(schema={schema!r}),
                schema={schema!r},
                version_table={version_table!r},
            )
            """
        )
    )
    for revision, down, table in (("r1", None, "items"), ("r2", "r1", "tags")):
        (root / "versions" / f"{revision}.py").write_text(
            textwrap.dedent(
                f"""
                import sqlalchemy as sa
                from alembic import op

                revision = {revision!r}
                down_revision = {down!r}
                branch_labels = None
                depends_on = None


                def upgrade():
                    op.create_table(
                        {table!r}, sa.Column("id", sa.Integer, primary_key=True), schema={schema!r}
                    )


                def downgrade():
                    op.drop_table({table!r}, schema={schema!r})
                """
            )
        )
    return root


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(pg_url, pool_size=2, max_overflow=2)
    yield eng
    await eng.dispose()


async def tables_in(engine: AsyncEngine, schema: str) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        )
        return {row[0] for row in rows}


async def test_run_migrations_creates_schema_tables_and_own_version_table(
    pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    schema = unique_schema()
    version_table = f"alembic_version_{schema}"
    script = write_migrations(tmp_path, schema=schema, version_table=version_table)
    assert await current_revision(engine, schema=schema, version_table=version_table) is None

    await run_migrations(
        url=pg_url, script_location=script, schema=schema, version_table=version_table
    )
    assert await tables_in(engine, schema) == {"items", "tags", version_table}
    assert await tables_in(engine, "public") & {"items", "tags", version_table} == set()
    head = migration_head(script)
    assert head == "r2"
    assert await current_revision(engine, schema=schema, version_table=version_table) == head

    # A second start is a no-op.
    await run_migrations(
        url=pg_url, script_location=script, schema=schema, version_table=version_table
    )
    assert await current_revision(engine, schema=schema, version_table=version_table) == head


async def test_concurrent_starts_migrate_once(
    pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    schema = unique_schema()
    version_table = "alembic_version_svc"
    script = write_migrations(tmp_path, schema=schema, version_table=version_table)
    await asyncio.gather(
        *(
            run_migrations(
                url=pg_url, script_location=script, schema=schema, version_table=version_table
            )
            for _ in range(4)
        )
    )
    assert await current_revision(engine, schema=schema, version_table=version_table) == "r2"


async def test_services_keep_separate_version_tables(
    pg_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    first, second = unique_schema(), unique_schema()
    for schema in (first, second):
        script = write_migrations(
            tmp_path / schema, schema=schema, version_table=f"alembic_version_{schema}"
        )
        await run_migrations(
            url=pg_url,
            script_location=script,
            schema=schema,
            version_table=f"alembic_version_{schema}",
        )
    assert f"alembic_version_{second}" not in await tables_in(engine, first)
    assert f"alembic_version_{first}" not in await tables_in(engine, second)


@pytest.mark.parametrize("bad", ['x"; DROP SCHEMA public; --', "Upper", ""])
async def test_identifiers_are_validated(pg_url: str, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        await run_migrations(
            url=pg_url, script_location=tmp_path, schema=bad, version_table="alembic_version"
        )


@pytest.fixture
async def table(engine: AsyncEngine) -> str:
    schema = unique_schema()
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
        await conn.execute(text(f"CREATE TABLE {schema}.t (v text)"))
    return f"{schema}.t"


async def values(engine: AsyncEngine, table: str) -> list[str]:
    async with engine.connect() as conn:
        return [row[0] for row in await conn.execute(text(f"SELECT v FROM {table} ORDER BY v"))]


async def test_transaction_commits_on_success(engine: AsyncEngine, table: str) -> None:
    factory = session_factory(engine)
    async with transaction(factory) as session:
        await session.execute(text(f"INSERT INTO {table} VALUES ('a')"))
    assert await values(engine, table) == ["a"]


async def test_transaction_rolls_back_on_error(engine: AsyncEngine, table: str) -> None:
    factory = session_factory(engine)

    async def handler() -> None:
        async with transaction(factory) as session:
            await session.execute(text(f"INSERT INTO {table} VALUES ('a')"))
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        await handler()
    assert await values(engine, table) == []


async def test_transaction_rolls_back_when_cancelled(engine: AsyncEngine, table: str) -> None:
    factory = session_factory(engine)
    inserted = asyncio.Event()

    async def handler() -> None:
        async with transaction(factory) as session:
            await session.execute(text(f"INSERT INTO {table} VALUES ('a')"))
            inserted.set()
            await asyncio.sleep(60)  # the client hangs up here

    task = asyncio.create_task(handler())
    await asyncio.wait_for(inserted.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await values(engine, table) == []
    # The connection went back to the pool in a usable state.
    async with transaction(factory) as session:
        await session.execute(text(f"INSERT INTO {table} VALUES ('b')"))
    assert await values(engine, table) == ["b"]


async def test_ping(engine: AsyncEngine) -> None:
    await ping(engine)


async def test_ping_unreachable_database_is_unavailable() -> None:
    dead = create_engine("postgresql://ciq:hunter2@127.0.0.1:1/ciq", pool_size=1)
    try:
        with pytest.raises(Unavailable) as info:
            await ping(dead, timeout_s=5)
    finally:
        await dead.dispose()
    assert info.value.reason == "DATABASE_UNAVAILABLE"
    assert info.value.message.startswith("the database is unreachable: ")
    assert "\n" not in info.value.message
    assert "hunter2" not in info.value.message


async def test_pooled_connections_cut_by_the_server_are_replaced(
    pg_url: str, engine: AsyncEngine
) -> None:
    """A restart (here: the backends terminated) costs a reconnect, not a failed request."""

    async def backend_pid() -> int:
        async with transaction(session_factory(engine)) as session:
            pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await asyncio.sleep(0.05)  # hold the connection so that both pooled ones are used
            return pid

    before = set(await asyncio.gather(backend_pid(), backend_pid()))
    assert len(before) == 2
    killer = create_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        async with killer.connect() as conn:
            for pid in before:
                # With a timeout it returns once the backend has exited.
                await conn.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
    finally:
        await killer.dispose()
    after = set(await asyncio.gather(backend_pid(), backend_pid()))
    assert len(after) == 2
    assert not after & before
