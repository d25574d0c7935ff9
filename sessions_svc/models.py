"""Tables owned by the sessions service (Postgres schema ``sessions``).

No other service reads or writes these tables; they reach sessions only over gRPC. Every table
carries ``tenant_id`` and leads its primary key with it, so every lookup is per tenant.

The hot paths (append, get, stream) use hand-written SQL in :mod:`sessions_svc.repository`;
these declarations serve the composed List queries and Alembic's autogenerate comparison.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

SCHEMA = "sessions"
VERSION_TABLE = "alembic_version_sessions"

metadata = MetaData(schema=SCHEMA)

_EMPTY_OBJECT = text("'{}'::jsonb")

sessions = Table(
    "sessions",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", UUID(as_uuid=True), nullable=False),
    Column("user_id", Text, nullable=False),
    Column("agent_id", Text, nullable=False, server_default=""),
    Column("app_name", Text, nullable=False, server_default=""),
    Column("scope", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    # Session-level keys only; `user:` and `app:` keys live in user_state / app_state.
    Column("state", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("metadata", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("labels", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("parent_session_id", UUID(as_uuid=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("event_count", BigInteger, nullable=False, server_default="0"),
    Column("last_event_id", UUID(as_uuid=True), nullable=True),
    # Sequence of the newest event: incremented under the row lock, it is the total order.
    Column("last_sequence", BigInteger, nullable=False, server_default="0"),
    # Bumped by every change; the etag.
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("request_id", Text, nullable=True),
    PrimaryKeyConstraint("tenant_id", "id", name="sessions_pkey"),
    # Every index here must avoid the columns an append updates (last_sequence, updated_at,
    # state, ...): the append's UPDATE then stays a HOT update that touches no index.
    Index("sessions_tenant_created_idx", "tenant_id", "created_at", "id"),
    Index("sessions_tenant_user_created_idx", "tenant_id", "user_id", "created_at"),
    Index("sessions_tenant_app_user_idx", "tenant_id", "app_name", "user_id"),
    Index(
        "sessions_tenant_parent_idx",
        "tenant_id",
        "parent_session_id",
        postgresql_where=text("parent_session_id IS NOT NULL"),
    ),
    Index(
        "sessions_tenant_request_id_key",
        "tenant_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index(
        "sessions_expires_at_idx",
        "expires_at",
        postgresql_where=text("expires_at IS NOT NULL"),
    ),
)

events = Table(
    "events",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("session_id", UUID(as_uuid=True), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("id", UUID(as_uuid=True), nullable=False),
    Column("author", Text, nullable=False),
    Column("agent_name", Text, nullable=False, server_default=""),
    Column("invocation_id", Text, nullable=False, server_default=""),
    Column("branch", Text, nullable=False, server_default=""),
    Column("timestamp", DateTime(timezone=True), nullable=False),
    # The serialized contextiq.sessions.v1.Event (without session_id and sequence, which are
    # the row's): reads parse it instead of rebuilding an event from columns and JSON.
    Column("payload", LargeBinary, nullable=False),
    PrimaryKeyConstraint("tenant_id", "session_id", "sequence", name="events_pkey"),
    Index("events_session_event_id_key", "tenant_id", "session_id", "id", unique=True),
    Index("events_session_timestamp_idx", "tenant_id", "session_id", "timestamp"),
)

app_state = Table(
    "app_state",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("app_name", Text, nullable=False),
    Column("state", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "app_name", name="app_state_pkey"),
)

user_state = Table(
    "user_state",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("app_name", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("state", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "app_name", "user_id", name="user_state_pkey"),
)
