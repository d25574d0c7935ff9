"""Tables owned by the memory service (Postgres schema ``memory``).

No other service reads or writes these tables; they reach memory only over gRPC.
"""

from sqlalchemy import MetaData

SCHEMA = "memory"
VERSION_TABLE = "alembic_version_memory"

metadata = MetaData(schema=SCHEMA)
