"""The session fixtures in tests/conftest.py hand out working servers."""

from __future__ import annotations

import asyncpg
import nats
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from ciq_runtime.embedded import EmbeddedNats


async def test_pg_url_works_with_sqlalchemy(pg_url: str, pg_dsn: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT current_database()"))).scalar() == "contextiq"
    finally:
        await engine.dispose()
    conn2 = await asyncpg.connect(pg_dsn)
    await conn2.close()


def test_pg_url_from_sync_test(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+asyncpg://")


async def test_nats_server_restart_keeps_url(nats_url: str, nats_server: EmbeddedNats) -> None:
    await nats_server.restart()
    assert nats_server.url == nats_url
    nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
    try:
        info = await nc.jetstream().account_info()
        assert info.streams >= 0
    finally:
        await nc.close()
