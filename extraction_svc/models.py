"""Tables owned by the extraction service (Postgres schema ``extraction``).

No other service reads or writes these tables; they reach extraction only over gRPC.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects import postgresql

SCHEMA = "extraction"
VERSION_TABLE = "alembic_version_extraction"

metadata = MetaData(schema=SCHEMA)

#: Jobs the worker gave up on (poison messages, deliveries exhausted), kept for an operator to
#: inspect and replay (``python -m extraction_svc dead-letters``).
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("subject", Text, nullable=False),
    Column("msg_id", Text, nullable=False, server_default=""),
    Column("stream_sequence", BigInteger, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", postgresql.JSONB, nullable=False, server_default="{}"),
    Column("reason", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("error_status", LargeBinary, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("operation_name", Text, nullable=False, server_default=""),
    Column("tenant_id", Text, nullable=False, server_default=""),
    Column("operation_failed", Boolean, nullable=False, server_default="false"),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    Column("replay_count", Integer, nullable=False, server_default="0"),
    Column("replayed_at", DateTime(timezone=True), nullable=True),
)
