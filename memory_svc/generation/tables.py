"""Tables of memory generation (schema ``memory``, migration ``memory_0003``)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from memory_svc.models import metadata

__all__ = ["generation_outbox", "generation_results", "generation_watermarks"]

#: Jobs committed with their operation and not yet acknowledged by JetStream. The relay
#: deletes a row only after the PubAck, so a job is never lost between Postgres and NATS.
generation_outbox = Table(
    "generation_outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("operation_name", Text, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("subject", Text, nullable=False),
    # The serialized GenerateMemoriesJob.
    Column("payload", LargeBinary, nullable=False),
    # Trace context of the accepting request (traceparent...), sent as message headers.
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("operation_name", name="generation_outbox_operation_key"),
    Index("generation_outbox_due_idx", "next_attempt_at", "id"),
)

#: The result of each applied generation: ApplyGeneration's idempotency record.
generation_results = Table(
    "generation_results",
    metadata,
    Column("operation_name", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    # The serialized GenerateMemoriesResponse.
    Column("response", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: Per (tenant, bank, session, scope): the newest event an applied generation processed.
generation_watermarks = Table(
    "generation_watermarks",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("bank_id", Text, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("scope_key", Text, nullable=False),
    Column("scope", JSONB, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("operation_name", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint(
        "tenant_id", "bank_id", "session_id", "scope_key", name="generation_watermarks_pkey"
    ),
)
