"""Assembles the sessions service: its servicer, its database and their lifecycle."""

from __future__ import annotations

from pathlib import Path

from ciq_runtime.component_kit import PostgresResource, service_spec
from ciq_runtime.metrics import TenantCountQuery
from ciq_runtime.server import Component
from ciq_runtime.settings import Settings
from contextiq.sessions.v1 import session_service_pb2_grpc
from sessions_svc import models
from sessions_svc.pool import ConnectionPool, to_dsn
from sessions_svc.repository import SessionRepository
from sessions_svc.servicer import SessionServicer
from sessions_svc.stream import EventHub
from sessions_svc.sweeper import Sweeper

__all__ = ["MIGRATIONS", "SERVICE_NAME", "SessionsBackend", "build_component"]

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "contextiq.sessions.v1.SessionService"


class SessionsBackend:
    """The service's resources: migrated schema, connections, live-event hub and sweeper.

    Created with the component, started by its ``on_start`` and stopped by its ``on_stop``;
    the servicer reaches the resources through the properties, which exist once started.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sweep_interval_s: float,
        sweep_batch_size: int,
    ) -> None:
        """Describe the resources; nothing connects until :meth:`start`.

        Args:
            settings: Process settings (database URL, pool sizes).
            sweep_interval_s: Pause between two TTL sweeps.
            sweep_batch_size: Expired sessions purged per transaction.
        """
        self._settings = settings
        self._sweep_interval_s = sweep_interval_s
        self._sweep_batch_size = sweep_batch_size
        self.db = PostgresResource(
            settings,
            script_location=MIGRATIONS,
            schema=models.SCHEMA,
            version_table=models.VERSION_TABLE,
        )
        self._pool: ConnectionPool | None = None
        self._repo: SessionRepository | None = None
        self._hub: EventHub | None = None
        self._sweeper: Sweeper | None = None

    @property
    def repo(self) -> SessionRepository:
        """The repository; only after :meth:`start`."""
        if self._repo is None:
            raise RuntimeError("SessionsBackend.start() has not run")
        return self._repo

    @property
    def hub(self) -> EventHub:
        """The live-event hub; only after :meth:`start`."""
        if self._hub is None:
            raise RuntimeError("SessionsBackend.start() has not run")
        return self._hub

    @property
    def sweeper(self) -> Sweeper:
        """The TTL sweeper; only after :meth:`start`."""
        if self._sweeper is None:
            raise RuntimeError("SessionsBackend.start() has not run")
        return self._sweeper

    async def start(self) -> None:
        """Migrate, connect, start listening for events and start the sweeper."""
        await self.db.start()  # raises FailedPrecondition without DATABASE_URL
        try:
            dsn = to_dsn(self._settings.database_url or "")
            # Every in-flight RPC holds one connection for one statement: size the pool like
            # the engine's peak (pool + overflow) so concurrent appends can share a commit.
            self._pool = ConnectionPool(
                dsn,
                max_size=self._settings.db_pool_size + self._settings.db_max_overflow,
                application_name=f"contextiq-{self._settings.service_name}-sessions",
            )
            await self._pool.start()
            self._repo = SessionRepository(self._pool, self.db.engine)
            self._hub = EventHub(dsn)
            await self._hub.start()
            self._sweeper = Sweeper(
                self._repo, interval_s=self._sweep_interval_s, batch_size=self._sweep_batch_size
            )
            self._sweeper.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop everything :meth:`start` started, in reverse order; safe to call twice."""
        if self._sweeper is not None:
            await self._sweeper.stop()
            self._sweeper = None
        if self._hub is not None:
            await self._hub.stop()
            self._hub = None
        self._repo = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self.db.stop()


def build_component(
    settings: Settings,
    *,
    max_event_bytes: int | None = None,
    sweep_interval_s: float | None = None,
    sweep_batch_size: int = 200,
    stream_poll_interval_s: float | None = None,
) -> Component:
    """Build the sessions component for a server process.

    Args:
        settings: Process settings; ``database_url`` is required.
        max_event_bytes: Largest serialized event AppendEvent accepts; default
            ``settings.max_event_bytes`` (CONTEXTIQ_MAX_EVENT_BYTES, 1 MiB).
        sweep_interval_s: Pause between two purges of expired sessions; default
            ``settings.sessions_sweep_interval_s``.
        sweep_batch_size: Expired sessions purged per transaction.
        stream_poll_interval_s: How often an idle StreamEvents re-checks the database;
            default ``settings.sessions_stream_poll_s``.

    Returns:
        The component: SessionService plus the Postgres resources it owns, migrated on start.
    """
    if max_event_bytes is None:
        max_event_bytes = settings.max_event_bytes
    if sweep_interval_s is None:
        sweep_interval_s = settings.sessions_sweep_interval_s
    if stream_poll_interval_s is None:
        stream_poll_interval_s = settings.sessions_stream_poll_s
    backend = SessionsBackend(
        settings, sweep_interval_s=sweep_interval_s, sweep_batch_size=sweep_batch_size
    )
    servicer = SessionServicer(
        backend,
        max_event_bytes=max_event_bytes,
        stream_poll_interval_s=stream_poll_interval_s,
    )
    return Component(
        name="sessions",
        services=[
            service_spec(
                SERVICE_NAME,
                servicer,
                session_service_pb2_grpc.add_SessionServiceServicer_to_server,
            )
        ],
        on_start=backend.start,
        on_stop=backend.stop,
        health_checks={"postgres": backend.db.ping},
        tenant_counts=(
            TenantCountQuery.of_table(
                "sessions", "sessions.sessions", "expires_at IS NULL OR expires_at > now()"
            ),
        ),
    )
