"""Progress steps commit asynchronously, and only their own transaction does."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from ciq_runtime.db import create_engine
from contextiq.memory.v1 import memory_service_pb2_grpc
from memory_svc.generation import progress
from tests.integration.memory.generation.conftest import Metadata, facts_request


async def test_a_running_step_commits_asynchronously_without_changing_the_connection(
    mem: memory_service_pb2_grpc.MemoryServiceStub, who: Metadata, tenant: str, pg_url: str
) -> None:
    operation = await mem.GenerateMemories(facts_request({"user_id": "u1"}, "x"), metadata=who)
    plain = create_engine(pg_url, pool_size=1, max_overflow=0)
    engine = plain.execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT version FROM memory.operations WHERE name = :n"),
                    {"n": operation.name},
                )
            ).one()
            step = progress._cas_statement(("attempt", "updated_at"), durable=False)
            updated = (
                await connection.execute(
                    step,
                    {
                        "p_name": operation.name,
                        "p_tenant_id": tenant,
                        "p_version": row.version,
                        "p_attempt": 2,
                        "p_updated_at": datetime.now(UTC),
                    },
                )
            ).one_or_none()
            setting = (await connection.execute(text("SHOW synchronous_commit"))).scalar()
            stored = (
                await connection.execute(
                    text("SELECT attempt, version FROM memory.operations WHERE name = :n"),
                    {"n": operation.name},
                )
            ).one()
        # Inside a transaction the step's effect shows: that transaction's commit is async.
        async with plain.connect() as connection:
            await connection.execute(
                step,
                {
                    "p_name": operation.name,
                    "p_tenant_id": tenant,
                    "p_version": row.version + 1,
                    "p_attempt": 3,
                    "p_updated_at": datetime.now(UTC),
                },
            )
            inside = (await connection.execute(text("SHOW synchronous_commit"))).scalar()
            await connection.rollback()
    finally:
        await engine.dispose()
        await plain.dispose()

    assert updated is not None
    assert (stored.attempt, stored.version) == (2, row.version + 1)
    # The setting was local to the step's own transaction: the pooled connection keeps "on".
    assert setting == "on"
    assert inside == "off"
