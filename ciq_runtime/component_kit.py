"""Building blocks the services assemble their components from.

A service's ``build_component(settings)`` wires its servicers to the resources it owns (its
Postgres schema, the NATS connection) through these helpers, so the three services start,
migrate, health-check and stop the same way whether they run alone or in the embedded stack.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ciq_runtime.errors import FailedPrecondition, Unavailable
from ciq_runtime.server import ServiceSpec

if TYPE_CHECKING:
    import grpc
    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from ciq_runtime.settings import Settings

__all__ = ["NatsResource", "PostgresResource", "service_spec"]


def service_spec(
    name: str, servicer: Any, add_to_server: Callable[[Any, grpc.aio.Server], None]
) -> ServiceSpec:
    """Describe one gRPC service of a component.

    Args:
        name: Fully-qualified proto service name (health and reflection use it).
        servicer: The servicer instance.
        add_to_server: The generated ``add_XServicer_to_server`` function.

    Returns:
        The spec the server registers.
    """
    return ServiceSpec(name=name, register=lambda server: add_to_server(servicer, server))


class PostgresResource:
    """The Postgres engine of one service: created and migrated on start, disposed on stop."""

    def __init__(
        self, settings: Settings, *, script_location: Path, schema: str, version_table: str
    ) -> None:
        """Prepare (but do not open) the engine.

        Args:
            settings: Process settings; ``database_url`` and the pool sizes are read.
            script_location: The service's Alembic ``migrations`` folder.
            schema: The Postgres schema the service owns.
            version_table: The service's Alembic version table.
        """
        self._settings = settings
        self._script_location = script_location
        self._schema = schema
        self._version_table = version_table
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The engine; only after :meth:`start`."""
        if self._engine is None:
            raise RuntimeError("PostgresResource.start() has not run")
        return self._engine

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """Session factory (``expire_on_commit=False``); only after :meth:`start`."""
        if self._sessions is None:
            raise RuntimeError("PostgresResource.start() has not run")
        return self._sessions

    async def start(self) -> None:
        """Open the engine, check the database answers and migrate the service's schema."""
        from ciq_runtime import db

        url = self._settings.database_url
        if not url:
            raise FailedPrecondition(
                "DATABASE_URL is not set: point it at Postgres "
                "(postgresql://user:password@host:5432/dbname) or use `make run`"
            )
        await db.run_migrations(
            url=url,
            script_location=self._script_location,
            schema=self._schema,
            version_table=self._version_table,
        )
        self._engine = db.create_engine(
            url,
            pool_size=self._settings.db_pool_size,
            max_overflow=self._settings.db_max_overflow,
        )
        self._sessions = db.session_factory(self._engine)
        await db.ping(self._engine)

    async def stop(self) -> None:
        """Dispose of the engine's connections; safe to call twice."""
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._sessions = None

    async def ping(self) -> None:
        """Raise :class:`Unavailable` when the database does not answer."""
        from ciq_runtime import db

        if self._engine is None:
            raise Unavailable("the database connection is not open")
        await db.ping(self._engine)


class NatsResource:
    """The NATS connection of a process, with its JetStream job stream ensured on start."""

    def __init__(
        self, settings: Settings, *, client_name: str, stream: str, subjects: list[str]
    ) -> None:
        """Prepare (but do not open) the connection.

        Args:
            settings: Process settings; ``nats_url`` is read.
            client_name: Connection name shown by the NATS server.
            stream: JetStream WorkQueue stream to create or update on start.
            subjects: Subjects of the stream.
        """
        self._settings = settings
        self._client_name = client_name
        self._stream = stream
        self._subjects = subjects
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

    @property
    def client(self) -> NatsClient:
        """The connection; only after :meth:`start`."""
        if self._nc is None:
            raise RuntimeError("NatsResource.start() has not run")
        return self._nc

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context; only after :meth:`start`."""
        if self._js is None:
            raise RuntimeError("NatsResource.start() has not run")
        return self._js

    async def start(self) -> None:
        """Connect and make sure the job stream exists with the expected settings."""
        from ciq_runtime import nats as nats_helpers

        url = self._settings.nats_url
        if not url:
            raise FailedPrecondition(
                "NATS_URL is not set: point it at a NATS server with JetStream "
                "(nats://host:4222) or use `make run`"
            )
        self._nc = await nats_helpers.connect_nats(url, name=self._client_name)
        self._js = self._nc.jetstream()
        await nats_helpers.ensure_stream(
            self._js, name=self._stream, subjects=self._subjects, retention="workqueue"
        )

    async def stop(self) -> None:
        """Drain and close the connection; safe to call twice."""
        if self._nc is not None:
            nc, self._nc, self._js = self._nc, None, None
            if not nc.is_closed:
                await nc.drain()

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless connected and JetStream answers."""
        if self._nc is None or not self._nc.is_connected or self._js is None:
            raise Unavailable("not connected to NATS")
        await self._js.stream_info(self._stream)
