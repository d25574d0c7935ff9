"""The ``auth`` schema: API keys, stored only as SHA-256."""

from __future__ import annotations

from sqlalchemy import ARRAY, Column, DateTime, Index, MetaData, Table, Text, Uuid, func

SCHEMA = "auth"
VERSION_TABLE = "alembic_version_auth"

metadata = MetaData(schema=SCHEMA)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    # hex SHA-256 of the plaintext; the plaintext is never stored.
    Column("key_hash", Text, nullable=False, unique=True),
    Column("key_prefix", Text, nullable=False),
    Column("display_name", Text, nullable=False, server_default=""),
    Column("permissions", ARRAY(Text), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_by", Text, nullable=False, server_default=""),
    Index("api_keys_tenant_created", "tenant_id", "created_at", "id"),
)
