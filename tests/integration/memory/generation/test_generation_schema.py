"""The memory schema at head holds the generation tables exactly as the code declares them."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData

from ciq_runtime.db import current_revision, migration_head
from memory_svc import models
from memory_svc.component import MIGRATIONS
from memory_svc.generation import tables
from tests.integration.memory.generation.conftest import GenServer

GENERATION_TABLES = {
    tables.generation_outbox.name,
    tables.generation_results.name,
    tables.generation_watermarks.name,
}


async def test_generation_tables_match_migration_0003(gen_server: GenServer) -> None:
    assert migration_head(MIGRATIONS) == "memory_0003"
    engine = gen_server.parts.backend._engine()
    assert (
        await current_revision(engine, schema=models.SCHEMA, version_table=models.VERSION_TABLE)
        == "memory_0003"
    )
    wanted = MetaData(schema=models.SCHEMA)
    for table in (
        tables.generation_outbox,
        tables.generation_results,
        tables.generation_watermarks,
    ):
        table.to_metadata(wanted)

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_schemas": True,
                "include_name": lambda name, type_, parents: (
                    name == models.SCHEMA
                    if type_ == "schema"
                    else type_ != "table" or name in GENERATION_TABLES
                ),
            },
        )
        return list(compare_metadata(context, wanted))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
