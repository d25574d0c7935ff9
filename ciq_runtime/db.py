"""Postgres access: the engine, sessions, transactions and per-service Alembic migrations.

One :func:`create_engine` per process, one session per RPC or job through
:func:`transaction`. Each service owns one Postgres schema and its own Alembic version table
inside it, so services never share tables and migrate independently.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, NullPool, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ciq_runtime.db_tracing import instrument_engine
from ciq_runtime.errors import Unavailable
from ciq_runtime.logging import redact_text
from ciq_runtime.settings import ConfigError, Settings, normalize_database_url

__all__ = [
    "alembic_env_run",
    "create_engine",
    "current_revision",
    "migration_head",
    "ping",
    "run_migrations",
    "session_factory",
    "transaction",
]

log = logging.getLogger(__name__)

# Schema and version-table names are interpolated into DDL, so only plain identifiers pass.
_IDENTIFIER_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")

#: A pooled connection idle for longer than this is pinged before use (see _check_on_checkout).
_PING_AFTER_IDLE_S = 10.0
_RETURNED_AT = "contextiq_returned_at"


def create_engine(
    settings_or_url: Settings | str,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    echo: bool = False,
    application_name: str | None = None,
) -> AsyncEngine:
    """Create the process's async engine (asyncpg driver, dead pooled connections replaced).

    Args:
        settings_or_url: Settings (``database_url``, pool sizes and service name are read) or
            a Postgres URL in any of the forms :class:`Settings` accepts.
        pool_size: Connections kept open; defaults to the settings' value, else 10.
        max_overflow: Extra connections under load; defaults to the settings' value, else 20.
        echo: Log every SQL statement (debugging only).
        application_name: Shown in ``pg_stat_activity``; defaults to the settings' service name.

    Returns:
        The engine. It connects lazily: creating it does not touch the database.

    Raises:
        ConfigError: If the settings carry no database URL, or the URL is not Postgres.
    """
    if isinstance(settings_or_url, Settings):
        settings = settings_or_url
        if settings.database_url is None:
            raise ConfigError(
                "DATABASE_URL is not set: expected postgresql://user:password@host:port/dbname"
            )
        url = settings.database_url
        pool_size = settings.db_pool_size if pool_size is None else pool_size
        max_overflow = settings.db_max_overflow if max_overflow is None else max_overflow
        application_name = application_name or f"contextiq-{settings.service_name}"
    else:
        url = normalize_database_url(settings_or_url)
    connect_args: dict[str, Any] = {}
    if application_name:
        connect_args["server_settings"] = {"application_name": application_name}
    engine = create_async_engine(
        url,
        # Connections are kept once opened (no overflow by default): one closed at checkin
        # and opened again for the next request costs a Postgres backend start each time.
        pool_size=30 if pool_size is None else pool_size,
        max_overflow=0 if max_overflow is None else max_overflow,
        # No pool_pre_ping: on asyncpg it costs three round trips (BEGIN, ";", ROLLBACK) per
        # checkout; _check_on_checkout below gives the same protection for less.
        echo=echo,
        connect_args=connect_args,
    )
    pool = engine.sync_engine.pool
    event.listen(pool, "checkout", _check_on_checkout)
    event.listen(pool, "checkin", _note_return)
    event.listen(pool, "connect", _note_return)
    # A span per statement (children of the RPC's or job's span).
    return instrument_engine(engine)


def _note_return(dbapi_connection: Any, record: Any, *_: Any) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _check_on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Turn a pooled connection that died into a reconnect instead of a failed RPC.

    A Postgres restart (or ``pg_terminate_backend``) closes the socket, which asyncpg notices
    as soon as the event loop reads it: such a connection is discarded here without a round
    trip, and the pool opens a new one. A connection idle for more than
    :data:`_PING_AFTER_IDLE_S` may have been cut silently (a proxy's idle timeout, a
    failover), so it is pinged first; one in steady use is not, which is what
    ``pool_pre_ping`` would cost on every checkout. Raising :class:`DisconnectionError` makes
    the pool invalidate the connection and retry the checkout with another one.
    """
    raw = getattr(dbapi_connection, "_connection", None)
    if raw is not None and raw.is_closed():
        raise DisconnectionError("the pooled connection was closed by the server")
    returned = record.info.get(_RETURNED_AT)
    if returned is not None and time.monotonic() - returned <= _PING_AFTER_IDLE_S:
        return
    try:
        dbapi_connection.ping()
    except Exception as exc:
        raise DisconnectionError(f"the pooled connection failed its ping: {exc!r}") from exc


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return the session factory to use with :func:`transaction`.

    ``expire_on_commit=False`` because objects are read after commit to build responses, and
    expired attributes would then trigger lazy loads, which async sessions cannot do.

    Args:
        engine: The process's engine.

    Returns:
        A session factory bound to ``engine``.
    """
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Run a block in one database transaction: commit on success, roll back otherwise.

    Rolls back on every exception including ``asyncio.CancelledError`` (a client that hangs
    up mid-RPC), so a cancelled request never leaves a half-written change behind.

    Args:
        factory: From :func:`session_factory`.

    Yields:
        A session inside an open transaction.
    """
    session = factory()
    try:
        await session.begin()
        yield session
        await session.commit()
    except BaseException:
        try:
            await session.rollback()
        except Exception:
            # The original error is the one worth reporting; a failed rollback usually means
            # the connection is gone, and the pool discards it on close.
            log.warning("rollback failed", exc_info=True)
        raise
    finally:
        await session.close()


async def ping(engine: AsyncEngine, *, timeout_s: float = 5.0) -> None:
    """Check that the database answers ``SELECT 1``.

    Args:
        engine: The engine to check.
        timeout_s: How long to wait for the answer.

    Raises:
        Unavailable: With reason ``DATABASE_UNAVAILABLE`` when the database cannot be
            reached or does not answer in time.
    """
    try:
        async with asyncio.timeout(timeout_s), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except TimeoutError as exc:
        raise Unavailable(
            f"the database did not answer within {timeout_s:g}s", reason="DATABASE_UNAVAILABLE"
        ) from exc
    except (OSError, SQLAlchemyError) as exc:
        raise Unavailable(
            f"the database is unreachable: {_describe(exc)}", reason="DATABASE_UNAVAILABLE"
        ) from exc


def _describe(exc: BaseException) -> str:
    # DBAPIError's own text appends the SQL and a documentation link on several lines; the
    # driver's error is the useful part. URLs in it could carry a password.
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return redact_text(f"{type(cause).__name__}: {first_line}" if first_line else repr(cause))


def _check_identifier(value: str, what: str) -> None:
    if not _IDENTIFIER_RE.fullmatch(value):
        raise ValueError(f"{what} must be a lower-case SQL identifier, got {value!r}")


def _alembic_config(script_location: Path) -> Config:
    config = Config()
    # Config values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    return config


async def _with_schema_lock(url: str, schema: str, work: Callable[[Connection], None]) -> None:
    """Run ``work`` on a sync connection holding the schema's advisory lock.

    The lock serialises concurrent starts of the same service (several replicas rolling out
    at once); different services lock different keys and migrate in parallel.
    """
    # NullPool: migration connections are one-offs and must really close, which also frees
    # the session-level advisory lock if unlocking below fails.
    engine = create_async_engine(normalize_database_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": schema})
            try:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                await conn.commit()
                await conn.run_sync(work)
                await conn.commit()
            finally:
                await _unlock(conn, schema)
    finally:
        await engine.dispose()


async def _unlock(conn: AsyncConnection, schema: str) -> None:
    try:
        await conn.rollback()
        await conn.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": schema})
        await conn.commit()
    except SQLAlchemyError:
        # The connection is closed right after; Postgres drops the lock with the session.
        log.debug("advisory unlock of %s failed", schema, exc_info=True)


async def run_migrations(
    *, url: str, script_location: Path, schema: str, version_table: str
) -> None:
    """Upgrade one service's schema to its Alembic head.

    Creates ``schema`` if missing, then runs ``alembic upgrade head`` with the service's
    ``env.py`` (which calls :func:`alembic_env_run`), holding ``pg_advisory_lock(hashtext(
    schema))`` so that processes starting together migrate one at a time.

    Args:
        url: Postgres URL (any form :class:`Settings` accepts).
        script_location: The service's Alembic folder (``env.py`` and ``versions/``).
        schema: The Postgres schema the service owns, e.g. ``"sessions"``.
        version_table: Its Alembic version table, e.g. ``"alembic_version_sessions"``; it is
            created inside ``schema``.

    Raises:
        ValueError: If ``schema`` or ``version_table`` is not a plain lower-case identifier.
    """
    _check_identifier(schema, "schema")
    _check_identifier(version_table, "version_table")
    config = _alembic_config(script_location)

    def upgrade(connection: Connection) -> None:
        # alembic_env_run picks the connection up from here instead of opening its own.
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    await _with_schema_lock(url, schema, upgrade)
    log.info("schema %s is at its migration head", schema, extra={"schema": schema})


def alembic_env_run(*, target_metadata: MetaData, schema: str, version_table: str) -> None:
    """Body of a service's ``migrations/env.py``.

    Under :func:`run_migrations` it uses the connection passed in
    ``config.attributes["connection"]``. Run from the ``alembic`` command line (e.g.
    ``alembic revision --autogenerate``) it connects to ``sqlalchemy.url`` from the Alembic
    config or else ``DATABASE_URL``, taking the same lock. Autogenerate only looks at
    ``schema``, so one service's migrations never try to drop another service's tables.

    Args:
        target_metadata: The service's models' metadata (tables declared with ``schema``).
        schema: The Postgres schema the service owns.
        version_table: The service's Alembic version table, inside ``schema``.

    Raises:
        RuntimeError: In offline (``--sql``) mode, or from the command line without a URL.
    """
    from alembic import context  # only importable while Alembic runs an env.py

    _check_identifier(schema, "schema")
    _check_identifier(version_table, "version_table")
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported: run them online")

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ != "schema" or name == schema

    def run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
            version_table_schema=schema,
            include_schemas=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = (
        context.config.get_main_option("sqlalchemy.url")
        or Settings.from_env(service_name="alembic").database_url
    )
    if not url:
        raise RuntimeError("set DATABASE_URL (or sqlalchemy.url) to run Alembic directly")
    asyncio.run(_with_schema_lock(url, schema, run))


def migration_head(script_location: Path) -> str:
    """Return the head revision of a service's migrations (reads files only).

    Args:
        script_location: The service's Alembic folder.

    Returns:
        The single head revision id.

    Raises:
        RuntimeError: If there is no revision or more than one head (merge them).
    """
    heads = ScriptDirectory.from_config(_alembic_config(script_location)).get_heads()
    if len(heads) != 1:
        raise RuntimeError(
            f"{script_location} must have exactly one migration head, found {len(heads)}: "
            + (", ".join(heads) if heads else "no revisions")
        )
    return heads[0]


async def current_revision(engine: AsyncEngine, *, schema: str, version_table: str) -> str | None:
    """Return the revision a service's schema is at.

    Args:
        engine: An engine on the database.
        schema: The service's schema.
        version_table: The service's Alembic version table.

    Returns:
        The revision id, or ``None`` before the first migration.
    """
    _check_identifier(schema, "schema")
    _check_identifier(version_table, "version_table")

    def read(connection: Connection) -> str | None:
        migration = MigrationContext.configure(
            connection, opts={"version_table": version_table, "version_table_schema": schema}
        )
        return migration.get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
