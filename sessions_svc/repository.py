"""SQL of the sessions service. Every method takes ``tenant_id`` and every query filters by it.

Hot paths (append, get, stream reads) are hand-written statements on the service's asyncpg
:class:`~sessions_svc.pool.ConnectionPool`, one round trip each; the List queries are composed
with SQLAlchemy Core (client filters compile to where-clauses) and run on the engine.

Concurrency model. An append is one statement: an ``UPDATE`` of the session row that bumps
``last_sequence`` (the row lock serialises appends to one session and gives them a total order),
checks ``expected_last_event_id`` against the latest committed row, and applies the session-level
state delta; the event insert and the ``user:`` / ``app:`` state upserts hang off its
``RETURNING``. Locks are always taken session → user state → app state, so concurrent writers
cannot deadlock on each other.

Expired sessions are invisible to every read and write here at once (``expires_at > now()``);
the sweeper deletes them later.
"""

# The SQL strings are assembled from module constants and parameter numbers only; every value
# travels as a bound parameter, so string-built SQL (S608) is not an injection vector here.
# ruff: noqa: S608

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from sqlalchemy import Select, and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from ciq_runtime.errors import Aborted, AlreadyExists, Internal, NotFound
from ciq_runtime.filtering import FilterField, MapField, ValueKind, compile_filter
from contextiq.sessions.v1 import session_pb2
from sessions_svc import models
from sessions_svc.convert import event_from_row, session_from_row, to_etag
from sessions_svc.pool import ConnectionPool
from sessions_svc.state import Changes, StateDelta, merged_view
from sessions_svc.validation import GetOptions, NewEvent, NewSession, SessionPatch, StateUpdate

__all__ = [
    "EVENT_FILTER_FIELDS",
    "SESSION_FILTER_FIELDS",
    "Deleted",
    "EventPage",
    "SessionPage",
    "SessionRepository",
]

_S = "sessions.sessions"
_E = "sessions.events"
_VISIBLE = "(s.expires_at IS NULL OR s.expires_at > now())"
_SESSION_COLUMN_NAMES = (
    "id",
    "user_id",
    "agent_id",
    "app_name",
    "scope",
    "state",
    "metadata",
    "labels",
    "parent_session_id",
    "created_at",
    "updated_at",
    "expires_at",
    "event_count",
    "last_event_id",
    "last_sequence",
    "version",
)
_SESSION_COLUMNS = ", ".join(f"s.{name}" for name in _SESSION_COLUMN_NAMES)
_MERGED_STATE_JOINS = """
LEFT JOIN sessions.user_state u
       ON u.tenant_id = s.tenant_id AND u.app_name = s.app_name AND u.user_id = s.user_id
LEFT JOIN sessions.app_state a
       ON a.tenant_id = s.tenant_id AND a.app_name = s.app_name"""

# Shared-state upserts as CTE members: they run only when the driving CTE returned its row and
# the delta touches them. $A / $B are replaced by the set / delete parameter numbers.
_USER_UPSERT = """
INSERT INTO sessions.user_state AS u (tenant_id, app_name, user_id, state, updated_at)
SELECT $1, d.app_name, d.user_id, coalesce($A::jsonb, '{}'), now() FROM {driver} d
 WHERE $A::jsonb IS NOT NULL OR $B::text[] IS NOT NULL
ON CONFLICT (tenant_id, app_name, user_id) DO UPDATE
   SET state = (u.state || coalesce($A::jsonb, '{}')) - coalesce($B::text[], '{}'),
       updated_at = now()
RETURNING 1"""
_APP_UPSERT = """
INSERT INTO sessions.app_state AS a (tenant_id, app_name, state, updated_at)
SELECT $1, d.app_name, coalesce($A::jsonb, '{}'), now() FROM {driver} d
 WHERE $A::jsonb IS NOT NULL OR $B::text[] IS NOT NULL
ON CONFLICT (tenant_id, app_name) DO UPDATE
   SET state = (a.state || coalesce($A::jsonb, '{}')) - coalesce($B::text[], '{}'),
       updated_at = now()
RETURNING 1"""
# Applies a session-level delta to s.state; unchanged (no new TOAST value) without one.
_SESSION_STATE_EXPR = """CASE WHEN $A::jsonb IS NULL AND $B::text[] IS NULL THEN s.state
                   ELSE (s.state || coalesce($A::jsonb, '{}')) - coalesce($B::text[], '{}') END"""


def _params(template: str, set_param: int, delete_param: int, *, driver: str = "") -> str:
    # str.replace, not str.format: the SQL holds JSON braces ('{}').
    sql = template.replace("$A", f"${set_param}").replace("$B", f"${delete_param}")
    return sql.replace("{driver}", driver)


def _append_sql(*, check_event_id: bool) -> str:
    # Client-chosen ids need the duplicate check (a retried append returns the stored event);
    # server-made UUIDv7s cannot collide, so their appends skip that index probe.
    duplicate = (
        f"""
       AND NOT EXISTS (SELECT 1 FROM {_E} e
                        WHERE e.tenant_id = $1 AND e.session_id = $2 AND e.id = $3)"""
        if check_event_id
        else ""
    )
    return f"""
WITH bump AS (
    UPDATE {_S} AS s
       SET last_sequence = s.last_sequence + 1,
           event_count = s.event_count + 1,
           last_event_id = $3,
           version = s.version + 1,
           updated_at = now(),
           state = {_params(_SESSION_STATE_EXPR, 11, 12)}
     WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE}
       AND ($4::uuid IS NULL OR s.last_event_id = $4::uuid){duplicate}
    RETURNING s.last_sequence, s.user_id, s.app_name
), ins AS (
    INSERT INTO {_E} (tenant_id, session_id, sequence, id, author, agent_name, invocation_id,
                      branch, timestamp, payload)
    SELECT $1, $2, bump.last_sequence, $3, $5, $6, $7, $8, $9, $10 FROM bump
    RETURNING sequence
), us AS ({_params(_USER_UPSERT, 13, 14, driver="bump")}
), ap AS ({_params(_APP_UPSERT, 15, 16, driver="bump")}
)
SELECT sequence FROM ins
"""


_APPEND_SQL: Final = {check: _append_sql(check_event_id=check) for check in (False, True)}

# Why an append did not happen: the session is gone, the event exists (a retry), or the
# session moved past the expected event.
_APPEND_DIAGNOSE_SQL: Final = f"""
SELECT s.last_event_id, s.last_sequence, {_VISIBLE} AS visible,
       e.sequence AS existing_sequence, e.payload AS existing_payload
  FROM {_S} s
  LEFT JOIN {_E} e ON e.tenant_id = s.tenant_id AND e.session_id = s.id AND e.id = $3
 WHERE s.tenant_id = $1 AND s.id = $2
"""

_UPDATE_STATE_SQL: Final = f"""
WITH bump AS (
    UPDATE {_S} AS s
       SET version = s.version + 1,
           updated_at = now(),
           state = {_params(_SESSION_STATE_EXPR, 4, 5)}
     WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE}
       AND ($3::bigint IS NULL OR s.version = $3::bigint)
    RETURNING s.user_id, s.app_name
), us AS ({_params(_USER_UPSERT, 6, 7, driver="bump")}
), ap AS ({_params(_APP_UPSERT, 8, 9, driver="bump")}
)
SELECT count(*) FROM bump
"""

_CREATE_SQL: Final = f"""
WITH created AS (
    INSERT INTO {_S} (tenant_id, id, user_id, agent_id, app_name, scope, state, metadata,
                      labels, parent_session_id, created_at, updated_at, expires_at,
                      request_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now(),
            coalesce($11::timestamptz, now() + $12::interval), $13)
    ON CONFLICT DO NOTHING
    RETURNING user_id, app_name
), us AS ({_params(_USER_UPSERT, 14, 15, driver="created")}
), ap AS ({_params(_APP_UPSERT, 16, 17, driver="created")}
)
SELECT count(*) FROM created
"""

# An expired session still holds its id and request_id until the sweeper runs; a create that
# reuses either must not be blocked by (or handed) an invisible session.
_PURGE_EXPIRED_TWIN_SQL: Final = f"""
DELETE FROM {_S}
 WHERE tenant_id = $1 AND (id = $2 OR request_id = $3) AND expires_at <= now()
RETURNING id
"""

_SESSION_BY_REQUEST_ID_SQL: Final = f"""
SELECT s.id FROM {_S} s WHERE s.tenant_id = $1 AND s.request_id = $2 AND {_VISIBLE}
"""

_LOCK_PARENT_SQL: Final = f"""
SELECT 1 FROM {_S} s WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE} FOR KEY SHARE
"""

_DELETE_SESSION_SQL: Final = f"""
DELETE FROM {_S} AS s
 WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE}
   AND ($3::bigint IS NULL OR s.version = $3::bigint)
RETURNING (SELECT count(*) FROM jsonb_object_keys(s.state)) AS state_keys
"""

_DELETE_EVENTS_SQL: Final = f"DELETE FROM {_E} WHERE tenant_id = $1 AND session_id = $2"

_CURRENT_VERSION_SQL: Final = f"""
SELECT s.version FROM {_S} s WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE}
"""

_POSITION_SQL: Final = f"""
SELECT s.last_sequence FROM {_S} s WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE}
"""

_EVENT_SEQUENCE_SQL: Final = f"""
SELECT sequence FROM {_E} WHERE tenant_id = $1 AND session_id = $2 AND id = $3
"""

_EVENTS_AFTER_SQL: Final = f"""
SELECT sequence, payload FROM {_E}
 WHERE tenant_id = $1 AND session_id = $2 AND sequence > $3
 ORDER BY sequence LIMIT $4
"""

_PURGE_BATCH_SQL: Final = f"""
DELETE FROM {_S} AS s
 WHERE (s.tenant_id, s.id) IN (
        SELECT tenant_id, id FROM {_S}
         WHERE expires_at <= now()
         ORDER BY expires_at
         LIMIT $1
           FOR UPDATE SKIP LOCKED)
RETURNING s.tenant_id, s.id
"""

_PURGE_EVENTS_SQL: Final = f"""
DELETE FROM {_E} AS e
 USING unnest($1::text[], $2::uuid[]) AS d(tenant_id, session_id)
 WHERE e.tenant_id = d.tenant_id AND e.session_id = d.session_id
"""


def _get_sql(*, with_events: bool, with_after: bool, with_limit: bool) -> str:
    # One statement (one snapshot) for the session, its merged state and its events. The
    # variants are separate statements so each gets its own plan: "newest N" walks the
    # primary key backwards; "after T" uses the (session, timestamp) index.
    if with_events:
        n = 2
        after = limit = ""
        if with_after:
            n += 1
            after = f"AND e.timestamp > ${n}"
        if with_limit:
            n += 1
            limit = f"LIMIT ${n}"
        events = f""",
       ev.sequences, ev.payloads
  FROM {_S} s {_MERGED_STATE_JOINS}
  LEFT JOIN LATERAL (
       SELECT array_agg(x.sequence ORDER BY x.sequence) AS sequences,
              array_agg(x.payload ORDER BY x.sequence) AS payloads
         FROM (SELECT e.sequence, e.payload FROM {_E} e
                WHERE e.tenant_id = s.tenant_id AND e.session_id = s.id {after}
                ORDER BY e.sequence DESC {limit}) x
  ) ev ON true"""
    else:
        events = f"""
  FROM {_S} s {_MERGED_STATE_JOINS}"""
    return f"""
SELECT {_SESSION_COLUMNS}, u.state AS user_state, a.state AS app_state{events}
 WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE}
"""


_GET_SQL: Final = {
    (events, after, limit): _get_sql(with_events=events, with_after=after, with_limit=limit)
    for events in (False, True)
    for after in (False, True)
    for limit in (False, True)
}

#: ListSessions filter allow-list.
SESSION_FILTER_FIELDS: Final[Mapping[str, FilterField | MapField]] = {
    "user_id": FilterField(models.sessions.c.user_id),
    "agent_id": FilterField(models.sessions.c.agent_id),
    "app_name": FilterField(models.sessions.c.app_name),
    "parent_session_id": FilterField(
        models.sessions.c.parent_session_id, ValueKind.UUID, nullable=True
    ),
    "scope": MapField(models.sessions.c.scope),
    "labels": MapField(models.sessions.c.labels),
    "created_at": FilterField(models.sessions.c.created_at, ValueKind.TIMESTAMP),
    "updated_at": FilterField(models.sessions.c.updated_at, ValueKind.TIMESTAMP),
    "expires_at": FilterField(models.sessions.c.expires_at, ValueKind.TIMESTAMP, nullable=True),
    "event_count": FilterField(models.sessions.c.event_count, ValueKind.NUMBER),
}

#: ListEvents filter allow-list.
EVENT_FILTER_FIELDS: Final[Mapping[str, FilterField | MapField]] = {
    "author": FilterField(models.events.c.author),
    "agent_name": FilterField(models.events.c.agent_name),
    "branch": FilterField(models.events.c.branch),
    "invocation_id": FilterField(models.events.c.invocation_id),
    "timestamp": FilterField(models.events.c.timestamp, ValueKind.TIMESTAMP),
    "sequence": FilterField(models.events.c.sequence, ValueKind.NUMBER),
}


@dataclass(frozen=True, slots=True)
class SessionPage:
    """One page of ListSessions: the sessions and the sort key after the last one."""

    sessions: list[session_pb2.Session]
    next_after: list[Any] | None


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of ListEvents: the events and the sequence after the last one."""

    events: list[session_pb2.Event]
    next_after: list[Any] | None


@dataclass(frozen=True, slots=True)
class Deleted:
    """What DeleteSession removed."""

    event_count: int
    state_key_count: int


def _jsonb(changes: Changes) -> tuple[dict[str, Any] | None, list[str] | None]:
    return (changes.set or None, changes.delete or None)


def _delta_params(delta: StateDelta) -> list[Any]:
    return [*_jsonb(delta.session), *_jsonb(delta.user), *_jsonb(delta.app)]


def _session_proto(row: Mapping[str, Any]) -> session_pb2.Session:
    return session_from_row(
        row, state=merged_view(row["state"], row["user_state"], row["app_state"])
    )


class SessionRepository:
    """Reads and writes sessions, events and shared state for one tenant per call."""

    def __init__(self, pool: ConnectionPool, engine: AsyncEngine | None) -> None:
        """Bind the repository to its connections.

        Args:
            pool: The hot-path pool.
            engine: SQLAlchemy engine for the composed List queries (None: Lists unavailable,
                for tools that only append or sweep).
        """
        self._pool = pool
        self._engine = engine

    # ----------------------------------------------------------------------------- sessions

    async def create(self, *, tenant_id: str, new: NewSession) -> session_pb2.Session:
        """Create a session, or return the one an earlier request with its request_id made.

        Raises:
            NotFound: The parent session does not exist (or is expired).
            AlreadyExists: A session with the client-chosen id exists.
        """
        session_id = new.session_id
        async with self._pool.acquire() as conn, conn.transaction():
            # FOR KEY SHARE: a concurrent delete of the parent waits for this create.
            if new.parent_session_id is not None and (
                await conn.fetchval(_LOCK_PARENT_SQL, tenant_id, new.parent_session_id) is None
            ):
                raise NotFound(f"parent session {new.parent_session_id} not found")
            if new.request_id is not None:
                await self._purge_expired_twins(conn, tenant_id, session_id, new.request_id)
            created = await conn.fetchval(
                _CREATE_SQL,
                tenant_id,
                session_id,
                new.user_id,
                new.agent_id,
                new.app_name,
                new.scope,
                new.delta.session.set,
                new.metadata,
                new.labels,
                new.parent_session_id,
                new.expires_at,
                new.ttl,
                new.request_id,
                *_jsonb(new.delta.user),
                *_jsonb(new.delta.app),
            )
            if not created:
                session_id = await self._resolve_create_conflict(conn, tenant_id, new)
            row = await conn.fetchrow(_GET_SQL[False, False, False], tenant_id, session_id)
        if row is None:  # pragma: no cover - created in this transaction
            raise Internal("created session vanished")
        return _session_proto(row)

    async def _purge_expired_twins(
        self, conn: asyncpg.Connection, tenant_id: str, session_id: uuid.UUID, request_id: str
    ) -> None:
        purged = await conn.fetch(_PURGE_EXPIRED_TWIN_SQL, tenant_id, session_id, request_id)
        for row in purged:
            await conn.execute(_DELETE_EVENTS_SQL, tenant_id, row["id"])

    async def _resolve_create_conflict(
        self, conn: asyncpg.Connection, tenant_id: str, new: NewSession
    ) -> uuid.UUID:
        if new.request_id is not None:
            existing = await conn.fetchval(_SESSION_BY_REQUEST_ID_SQL, tenant_id, new.request_id)
            if existing is not None:
                return uuid.UUID(str(existing))
        raise AlreadyExists(
            f"session {new.session_id} already exists",
            metadata={"session_id": str(new.session_id)},
        )

    async def get(self, *, tenant_id: str, options: GetOptions) -> session_pb2.Session:
        """The session with its merged state and the events the options select.

        Raises:
            NotFound: No visible session with that id in the tenant.
        """
        with_events = options.limit != 0
        sql = _GET_SQL[with_events, options.after is not None, options.limit is not None]
        args: list[Any] = [tenant_id, options.session_id]
        if with_events and options.after is not None:
            args.append(options.after)
        if with_events and options.limit is not None:
            args.append(options.limit)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql, *args)
        if row is None:
            raise NotFound(f"session {options.session_id} not found")
        session = _session_proto(row)
        if with_events and row["sequences"]:
            sid = session.id
            session.events.extend(
                event_from_row(payload, session_id=sid, sequence=sequence)
                for sequence, payload in zip(row["sequences"], row["payloads"], strict=True)
            )
        return session

    async def update(self, *, tenant_id: str, patch: SessionPatch) -> session_pb2.Session:
        """Change metadata, labels or expiration.

        Raises:
            NotFound: No visible session.
            Aborted: The etag does not match.
        """
        sets: list[str] = []
        args: list[Any] = [tenant_id, patch.session_id, patch.expected_version]
        if "metadata" in patch.fields:
            args.append(patch.metadata)
            sets.append(f"metadata = ${len(args)}::jsonb")
        if "labels" in patch.fields:
            args.append(patch.labels)
            sets.append(f"labels = ${len(args)}::jsonb")
        if "expiration" in patch.fields:
            args += [patch.expires_at, patch.ttl]
            at, ttl = len(args) - 1, len(args)
            sets.append(f"expires_at = coalesce(${at}::timestamptz, now() + ${ttl}::interval)")
        sql = f"""
UPDATE {_S} AS s SET {", ".join(sets)}, version = s.version + 1, updated_at = now()
 WHERE s.tenant_id = $1 AND s.id = $2 AND {_VISIBLE}
   AND ($3::bigint IS NULL OR s.version = $3::bigint)
RETURNING s.id"""
        async with self._pool.acquire() as conn:
            if await conn.fetchval(sql, *args) is None:
                await self._raise_not_found_or_stale(conn, tenant_id, patch.session_id)
            row = await conn.fetchrow(_GET_SQL[False, False, False], tenant_id, patch.session_id)
        if row is None:
            raise NotFound(f"session {patch.session_id} not found")
        return _session_proto(row)

    async def _raise_not_found_or_stale(
        self, conn: asyncpg.Connection, tenant_id: str, session_id: uuid.UUID
    ) -> None:
        version = await conn.fetchval(_CURRENT_VERSION_SQL, tenant_id, session_id)
        if version is None:
            raise NotFound(f"session {session_id} not found")
        raise Aborted(
            f"session {session_id} changed since the etag was read: read it again",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": to_etag(version)},
        )

    async def delete(
        self, *, tenant_id: str, session_id: uuid.UUID, expected_version: int | None
    ) -> Deleted:
        """Delete a session, its events and its session-level state.

        Raises:
            NotFound: No visible session.
            Aborted: The etag does not match.
        """
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                # The session row first: its lock makes concurrent appends wait, and they find
                # it gone. The events go in a second statement, whose fresh snapshot includes
                # any event an append committed while this one waited for the lock.
                state_keys = await conn.fetchval(
                    _DELETE_SESSION_SQL, tenant_id, session_id, expected_version
                )
                if state_keys is not None:
                    status = await conn.execute(_DELETE_EVENTS_SQL, tenant_id, session_id)
                    return Deleted(event_count=_rowcount(status), state_key_count=state_keys)
            await self._raise_not_found_or_stale(conn, tenant_id, session_id)
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_sessions(
        self,
        *,
        tenant_id: str,
        filter_text: str,
        shorthand: Mapping[str, str],
        order_by: tuple[str, bool],
        size: int,
        after: Sequence[Any] | None,
    ) -> SessionPage:
        """A page of visible sessions (without events), ordered by ``order_by``.

        Args:
            tenant_id: The tenant.
            filter_text: AIP-160 filter over :data:`SESSION_FILTER_FIELDS`.
            shorthand: Exact-match fields from the request (user_id, agent_id, ...).
            order_by: Column name (created_at / updated_at) and whether descending.
            size: Page size.
            after: Sort key ``[iso timestamp, id]`` of the last session of the previous page.

        Raises:
            InvalidArgument: A bad filter or page token content.
        """
        s, u, a = models.sessions, models.user_state, models.app_state
        key_name, descending = order_by
        key = s.c[key_name]
        where = [
            s.c.tenant_id == tenant_id,
            or_(s.c.expires_at.is_(None), s.c.expires_at > func.now()),
            compile_filter(filter_text, SESSION_FILTER_FIELDS),
        ]
        for name, value in shorthand.items():
            where.append(s.c[name] == value)
        if after is not None:
            position = tuple_(key, s.c.id)
            bound = tuple_(_as_datetime(after[0]), uuid.UUID(str(after[1])))
            where.append(position < bound if descending else position > bound)
        stmt: Select[Any] = (
            select(
                *[s.c[name] for name in _SESSION_COLUMN_NAMES],
                u.c.state.label("user_state"),
                a.c.state.label("app_state"),
            )
            .select_from(
                s.outerjoin(
                    u,
                    and_(
                        u.c.tenant_id == s.c.tenant_id,
                        u.c.app_name == s.c.app_name,
                        u.c.user_id == s.c.user_id,
                    ),
                ).outerjoin(a, and_(a.c.tenant_id == s.c.tenant_id, a.c.app_name == s.c.app_name))
            )
            .where(*where)
            .order_by(
                key.desc() if descending else key.asc(),
                s.c.id.desc() if descending else s.c.id.asc(),
            )
            .limit(size + 1)
        )
        rows = await self._fetch_all(stmt)
        more = len(rows) > size
        rows = rows[:size]
        sessions = [_session_proto(row) for row in rows]
        next_after = None
        if more and rows:
            last = rows[-1]
            next_after = [last[key_name].isoformat(), str(last["id"])]
        return SessionPage(sessions=sessions, next_after=next_after)

    async def _fetch_all(self, stmt: Select[Any]) -> list[Mapping[str, Any]]:
        if self._engine is None:  # pragma: no cover - wiring error
            raise Internal("listing is not configured")
        async with self._engine.connect() as conn:
            result = await conn.execute(stmt)
            return [row._mapping for row in result]

    # ------------------------------------------------------------------------------- events

    async def append(self, *, tenant_id: str, new: NewEvent) -> session_pb2.Event:
        """Append an event and apply its state delta atomically.

        Returns:
            The stored event with its session id and sequence; for a retried event id, the
            event stored the first time.

        Raises:
            NotFound: No visible session.
            Aborted: ``expected_last_event_id`` is not the session's newest event (reason
                ``STALE_APPEND``, metadata ``current_last_event_id`` / ``current_sequence``).
        """
        args = (
            tenant_id,
            new.session_id,
            new.event_id,
            new.expected_last_event_id,
            new.event.author,
            new.event.agent_name,
            new.event.invocation_id,
            new.event.branch,
            new.timestamp,
            new.payload,
            *_delta_params(new.delta),
        )
        async with self._pool.acquire() as conn:
            for _attempt in range(3):
                try:
                    sequence = await conn.fetchval(_APPEND_SQL[new.client_id], *args)
                except asyncpg.UniqueViolationError:
                    sequence = None  # the same event id raced in: answered below
                except asyncpg.DeadlockDetectedError:
                    continue  # a writer took shared-state locks in another order; retry
                if sequence is not None:
                    stored = new.event
                    stored.session_id = str(new.session_id)
                    stored.sequence = sequence
                    return stored
                row = await conn.fetchrow(
                    _APPEND_DIAGNOSE_SQL, tenant_id, new.session_id, new.event_id
                )
                if row is None or not row["visible"]:
                    raise NotFound(f"session {new.session_id} not found")
                if row["existing_sequence"] is not None:
                    return event_from_row(
                        row["existing_payload"],
                        session_id=str(new.session_id),
                        sequence=row["existing_sequence"],
                    )
                if new.expected_last_event_id is not None and (
                    row["last_event_id"] != new.expected_last_event_id
                ):
                    current = str(row["last_event_id"]) if row["last_event_id"] else ""
                    raise Aborted(
                        f"session {new.session_id} moved on: its newest event is "
                        f"{current or '(none)'} at sequence {row['last_sequence']}, not "
                        f"{new.expected_last_event_id}; read the new events and retry",
                        reason="STALE_APPEND",
                        metadata={
                            "current_last_event_id": current,
                            "current_sequence": str(row["last_sequence"]),
                            "expected_last_event_id": str(new.expected_last_event_id),
                        },
                    )
                # Otherwise the row changed between the two statements (e.g. the position
                # caught up): try again.
        raise Aborted(
            f"could not append to session {new.session_id} under contention; retry",
            reason="APPEND_CONTENDED",
            retry_after_s=0.05,
        )

    async def check_visible(self, *, tenant_id: str, session_id: uuid.UUID) -> int:
        """The session's newest sequence.

        Raises:
            NotFound: No visible session.
        """
        async with self._pool.acquire() as conn:
            position = await conn.fetchval(_POSITION_SQL, tenant_id, session_id)
        if position is None:
            raise NotFound(f"session {session_id} not found")
        return int(position)

    async def position(self, *, tenant_id: str, session_id: uuid.UUID) -> int | None:
        """The session's newest sequence, or None when it is not visible."""
        async with self._pool.acquire() as conn:
            position = await conn.fetchval(_POSITION_SQL, tenant_id, session_id)
        return None if position is None else int(position)

    async def event_sequence(
        self, *, tenant_id: str, session_id: uuid.UUID, event_id: uuid.UUID
    ) -> int | None:
        """The sequence of an event of the session, or None."""
        async with self._pool.acquire() as conn:
            sequence = await conn.fetchval(_EVENT_SEQUENCE_SQL, tenant_id, session_id, event_id)
        return None if sequence is None else int(sequence)

    async def events_after(
        self, *, tenant_id: str, session_id: uuid.UUID, after_sequence: int, limit: int
    ) -> list[session_pb2.Event]:
        """Up to ``limit`` events with a sequence above ``after_sequence``, in order."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_EVENTS_AFTER_SQL, tenant_id, session_id, after_sequence, limit)
        sid = str(session_id)
        return [
            event_from_row(row["payload"], session_id=sid, sequence=row["sequence"]) for row in rows
        ]

    async def list_events(
        self,
        *,
        tenant_id: str,
        session_id: uuid.UUID,
        filter_text: str,
        descending: bool,
        size: int,
        after: Sequence[Any] | None,
    ) -> EventPage:
        """A page of a session's events in sequence order.

        Raises:
            NotFound: No visible session.
            InvalidArgument: A bad filter.
        """
        e = models.events
        where_clause = compile_filter(filter_text, EVENT_FILTER_FIELDS)
        await self.check_visible(tenant_id=tenant_id, session_id=session_id)
        where = [e.c.tenant_id == tenant_id, e.c.session_id == session_id, where_clause]
        if after is not None:
            bound = int(after[0])
            where.append(e.c.sequence < bound if descending else e.c.sequence > bound)
        stmt: Select[Any] = (
            select(e.c.sequence, e.c.payload)
            .where(*where)
            .order_by(e.c.sequence.desc() if descending else e.c.sequence.asc())
            .limit(size + 1)
        )
        rows = await self._fetch_all(stmt)
        more = len(rows) > size
        rows = rows[:size]
        sid = str(session_id)
        events = [
            event_from_row(row["payload"], session_id=sid, sequence=row["sequence"]) for row in rows
        ]
        return EventPage(
            events=events, next_after=[rows[-1]["sequence"]] if more and rows else None
        )

    # -------------------------------------------------------------------------------- state

    async def update_state(self, *, tenant_id: str, update: StateUpdate) -> session_pb2.Session:
        """Apply a state delta without an event.

        Raises:
            NotFound: No visible session.
            Aborted: The etag does not match (reason ``ETAG_MISMATCH``).
        """
        async with self._pool.acquire() as conn:
            updated = await conn.fetchval(
                _UPDATE_STATE_SQL,
                tenant_id,
                update.session_id,
                update.expected_version,
                *_delta_params(update.delta),
            )
            if not updated:
                await self._raise_not_found_or_stale(conn, tenant_id, update.session_id)
            row = await conn.fetchrow(_GET_SQL[False, False, False], tenant_id, update.session_id)
        if row is None:
            raise NotFound(f"session {update.session_id} not found")
        return _session_proto(row)

    # ------------------------------------------------------------------------------ sweeper

    async def purge_expired(self, *, batch_size: int) -> tuple[int, int]:
        """Delete up to ``batch_size`` expired sessions of every tenant with their events.

        The one cross-tenant method: expiry is the same rule for every tenant, and the sweeper
        acts for none of them. ``SKIP LOCKED`` lets several replicas sweep side by side.

        Returns:
            (sessions deleted, events deleted).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_PURGE_BATCH_SQL, batch_size)
            if not rows:
                return 0, 0
            status = await conn.execute(
                _PURGE_EVENTS_SQL, [r["tenant_id"] for r in rows], [r["id"] for r in rows]
            )
        return len(rows), _rowcount(status)


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 42".
    return int(status.rsplit(" ", 1)[-1])


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))
