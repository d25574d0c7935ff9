"""Tables owned by the memory service (Postgres schema ``memory``).

No other service reads or writes these tables; they reach memory only over gRPC. Every table
carries ``tenant_id`` and every query filters on it (repositories take it as a required
keyword).

Postgres is the source of truth: the vector index (:mod:`memory_svc.index`) is derived from
``memories`` (whose rows keep their embedding) and can be rebuilt from it at any time.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

SCHEMA = "memory"
VERSION_TABLE = "alembic_version_memory"

metadata = MetaData(schema=SCHEMA)

_EMPTY_OBJECT = text("'{}'::jsonb")
_EMPTY_ARRAY = text("'[]'::jsonb")

memories = Table(
    "memories",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("bank_id", Text, nullable=False),
    Column("scope", JSONB, nullable=False),
    # Canonical form of the scope ("k1=v1\x1fk2=v2", keys sorted): exact scope match is one
    # btree equality instead of a JSONB comparison.
    Column("scope_key", Text, nullable=False),
    Column("fact", Text, nullable=False),
    Column("topic", Text, nullable=False, server_default=""),
    Column("confidence", Float, nullable=False, server_default="1"),
    Column("metadata", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("source_session_id", Text, nullable=False, server_default=""),
    Column("source_event_ids", JSONB, nullable=False, server_default=_EMPTY_ARRAY),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    # Soft delete: the row keeps its id, request_id and etag so that rollback can restore it
    # and a retried create with the same request_id still finds it.
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("revision_count", Integer, nullable=False, server_default="0"),
    Column("request_id", Text, nullable=True),
    # float32 little-endian vector of `fact` under `embedding_model`: reindexing and repairs
    # need no model call unless the model changed.
    Column("embedding", LargeBinary, nullable=True),
    Column("embedding_model", Text, nullable=False, server_default=""),
    # Set in the write's transaction, cleared once the vector index holds the change: a crash
    # or an index error between the two leaves it set, and the repair loop fixes the index.
    Column("index_dirty", Boolean, nullable=False, server_default="true"),
    Index(
        "memories_tenant_bank_scope_updated_idx",
        "tenant_id",
        "bank_id",
        "scope_key",
        "updated_at",
    ),
    Index("memories_tenant_bank_updated_idx", "tenant_id", "bank_id", "updated_at", "id"),
    Index("memories_tenant_bank_created_idx", "tenant_id", "bank_id", "created_at", "id"),
    Index("memories_scope_gin_idx", "scope", postgresql_using="gin"),
    Index(
        "memories_tenant_request_id_key",
        "tenant_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index(
        "memories_expires_at_idx",
        "expires_at",
        postgresql_where=text("expires_at IS NOT NULL AND deleted_at IS NULL"),
    ),
    Index("memories_dirty_idx", "updated_at", postgresql_where=text("index_dirty")),
)

memory_revisions = Table(
    "memory_revisions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", Text, nullable=False),
    # No foreign key: history outlives the memory row (the TTL sweeper removes expired rows).
    Column("memory_id", UUID(as_uuid=True), nullable=False),
    Column("bank_id", Text, nullable=False),
    Column("scope", JSONB, nullable=False),
    Column("scope_key", Text, nullable=False),
    Column("revision_number", Integer, nullable=False),
    Column("action", Text, nullable=False),
    Column("fact", Text, nullable=False),
    Column("topic", Text, nullable=False, server_default=""),
    Column("confidence", Float, nullable=False, server_default="1"),
    Column("metadata", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("source_session_id", Text, nullable=False, server_default=""),
    Column("source_event_ids", JSONB, nullable=False, server_default=_EMPTY_ARRAY),
    Column("operation_name", Text, nullable=False, server_default=""),
    Column("extracted_memories", JSONB, nullable=False, server_default=_EMPTY_ARRAY),
    Column("rolled_back_to", Integer, nullable=False, server_default="0"),
    Column("reason", Text, nullable=False, server_default=""),
    # The memory's created_at, copied so that an as-of snapshot is a full memory.
    Column("memory_created_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("memory_id", "revision_number", name="memory_revisions_number_key"),
    Index("memory_revisions_tenant_memory_idx", "tenant_id", "memory_id", "revision_number"),
    Index(
        "memory_revisions_tenant_bank_scope_created_idx",
        "tenant_id",
        "bank_id",
        "scope_key",
        "created_at",
    ),
    Index("memory_revisions_tenant_bank_created_idx", "tenant_id", "bank_id", "created_at"),
)

memory_banks = Table(
    "memory_banks",
    metadata,
    Column("tenant_id", Text, nullable=False),
    Column("id", Text, nullable=False),
    # The MemoryBank message's configurable fields as proto JSON (topics, few-shot examples,
    # models, TTL config, flags, scope keys).
    Column("config", JSONB, nullable=False, server_default=_EMPTY_OBJECT),
    Column("embedding_model", Text, nullable=False),
    Column("embedding_dimension", Integer, nullable=False, server_default="0"),
    # The model the index currently holds vectors of; differs from embedding_model from a
    # model change until ReindexMemories finishes.
    Column("indexed_model", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", BigInteger, nullable=False, server_default="1"),
    PrimaryKeyConstraint("tenant_id", "id", name="memory_banks_pkey"),
)

operations = Table(
    "operations",
    metadata,
    # "operations/<uuid>".
    Column("name", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    # "reindex" here; "generate" from the generation issue on.
    Column("kind", Text, nullable=False),
    Column("bank_id", Text, nullable=False, server_default="default"),
    Column("done", Boolean, nullable=False, server_default="false"),
    # Serialized google.protobuf.Any of the kind's metadata message (progress).
    Column("metadata", LargeBinary, nullable=True),
    # Serialized google.protobuf.Any of the response, or google.rpc.Status of the error.
    Column("response", LargeBinary, nullable=True),
    Column("error", LargeBinary, nullable=True),
    # The request that started it, for resuming after a restart (serialized proto).
    Column("request", LargeBinary, nullable=True),
    Column("request_id", Text, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default="false"),
    Column("attempt", Integer, nullable=False, server_default="0"),
    # Bumped by every change; watchers compare it.
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("operations_tenant_created_idx", "tenant_id", "created_at", "name"),
    Index(
        "operations_tenant_request_id_key",
        "tenant_id",
        "request_id",
        unique=True,
        postgresql_where=text("request_id IS NOT NULL"),
    ),
    Index("operations_running_idx", "kind", postgresql_where=text("NOT done")),
)
