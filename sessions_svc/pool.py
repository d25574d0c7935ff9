"""A small asyncpg connection pool for the service's hot paths.

Appends and reads are one SQL statement each; what surrounds the statement decides the
throughput. Measured on the 2-core dev machine (one `SELECT 1` round trip ≈ 50 µs), a checkout
costs ~700 µs through SQLAlchemy with ``pool_pre_ping`` (a ping per checkout), ~250-400 µs
through ``asyncpg.Pool`` (a reset query and a shielded task per release) and ~45 µs here. This
pool therefore hands out raw connections without ping or reset; a connection that failed in a
way that may have left it unusable (cancelled mid-query, I/O error, left in a transaction) is
closed instead of being reused, and a new one is opened on demand.

SQLAlchemy's engine (:class:`ciq_runtime.component_kit.PostgresResource`) still runs the
migrations, the health check and the composed List queries.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from types import TracebackType

import asyncpg

from ciq_runtime.db_tracing import TracedConnection
from ciq_runtime.errors import Unavailable

__all__ = ["ConnectionPool", "to_dsn"]

log = logging.getLogger(__name__)


def to_dsn(url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    _scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep else url


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns travel as Python objects; the text format is what asyncpg sends anyway.
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


class ConnectionPool:
    """Up to ``max_size`` asyncpg connections, reused most-recently-released first."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int,
        application_name: str = "contextiq-sessions",
        connect_timeout_s: float = 10.0,
    ) -> None:
        """Describe the pool; no connection is opened until :meth:`start`.

        Args:
            dsn: ``postgresql://`` DSN.
            max_size: Most connections open at once.
            application_name: Shown in ``pg_stat_activity``.
            connect_timeout_s: Budget for opening one connection.
        """
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._dsn = dsn
        self._max_size = max_size
        self._application_name = application_name
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[asyncpg.Connection] = []
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self._size = 0  # open connections, idle or in use, plus those being opened
        self._closed = True

    async def start(self) -> None:
        """Open one connection, so that a wrong DSN fails the start and not the first RPC."""
        self._closed = False
        conn = await self._connect()
        self._size += 1
        self._idle.append(conn)

    async def close(self) -> None:
        """Close idle connections now and busy ones when they are released."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        idle, self._idle = self._idle, []
        for conn in idle:
            self._size -= 1
            await _close_quietly(conn)

    @property
    def size(self) -> int:
        """Connections currently open (idle or in use)."""
        return self._size

    async def _connect(self) -> asyncpg.Connection:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout_s,
                server_settings={"application_name": self._application_name},
                connection_class=TracedConnection,  # a span per statement
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise Unavailable(
                f"the database is unreachable: {type(exc).__name__}",
                reason="DATABASE_UNAVAILABLE",
                retry_after_s=1.0,
            ) from exc
        try:
            await _init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _get(self) -> asyncpg.Connection:
        if self._closed:
            raise Unavailable("the service is shutting down", reason="SHUTTING_DOWN")
        if self._idle:
            return self._idle.pop()
        if self._size < self._max_size:
            self._size += 1
            try:
                return await self._connect()
            except BaseException:
                self._size -= 1
                self._wake_one_waiter()  # it may open the connection we could not
                raise
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                # Handed a connection in the same tick as the cancellation: give it back.
                self._put(waiter.result())
            raise
        if conn is None:
            return await self._get()  # woken to open a connection, or closed: retry
        return conn

    def _wake_one_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _put(self, conn: asyncpg.Connection) -> None:
        if self._closed or conn.is_closed():
            self._discard(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: asyncpg.Connection) -> None:
        self._size -= 1
        if not conn.is_closed():
            conn.terminate()
        self._wake_one_waiter()

    def acquire(self) -> _Lease:
        """Borrow a connection for one statement or transaction: ``async with pool.acquire()``.

        The block gets the connection, outside any transaction. Entering raises
        :class:`Unavailable` when the database cannot be reached or the pool is closed; an
        I/O error inside the block is re-raised as :class:`Unavailable` too.
        """
        return _Lease(self)

    def _release(self, conn: asyncpg.Connection, exc: BaseException | None) -> None:
        # Errors reported by the server, and our own exceptions between statements, leave the
        # protocol in sync; an I/O error, a timeout or a cancellation mid-query (a reply may
        # still be in flight) does not: such a connection is never reused.
        reusable = exc is None or (
            isinstance(exc, Exception)
            and not isinstance(exc, (OSError, asyncpg.InterfaceError))  # TimeoutError too
        )
        if reusable and not conn.is_closed() and not conn.is_in_transaction():
            self._put(conn)
        else:
            self._discard(conn)


class _Lease:
    """``async with pool.acquire() as conn``: a class, not a generator context manager,
    because every RPC goes through it and a generator costs several microseconds more."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool._get()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None, "lease exited without being entered"
        self._pool._release(conn, exc)
        if isinstance(exc, (OSError, asyncpg.InterfaceError)):
            raise Unavailable(
                f"lost the database connection: {type(exc).__name__}",
                reason="DATABASE_UNAVAILABLE",
                retry_after_s=1.0,
            ) from exc


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2.0)
    except Exception:  # noqa: BLE001 - closing a broken connection may fail any way it likes
        conn.terminate()
