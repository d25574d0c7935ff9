"""The sessions schema: one migration head, and the models match what it creates."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection

from ciq_runtime.db import current_revision, migration_head
from sessions_svc import models
from sessions_svc.component import MIGRATIONS
from tests.integration.sessions.conftest import SessionsServer


async def test_schema_is_at_head_and_matches_the_models(sessions: SessionsServer) -> None:
    engine = sessions.backend.db.engine
    assert migration_head(MIGRATIONS) == "sessions_0002"
    assert (
        await current_revision(engine, schema=models.SCHEMA, version_table=models.VERSION_TABLE)
        == "sessions_0002"
    )

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, _parents: (
                    type_ != "schema" or name == models.SCHEMA
                ),
                "version_table": models.VERSION_TABLE,
                "version_table_schema": models.SCHEMA,
            },
        )
        return list(compare_metadata(context, models.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
