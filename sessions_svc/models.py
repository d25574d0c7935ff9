"""Tables owned by the sessions service (Postgres schema ``sessions``).

No other service reads or writes these tables; they reach sessions only over gRPC.
"""

from sqlalchemy import MetaData

SCHEMA = "sessions"
VERSION_TABLE = "alembic_version_sessions"

metadata = MetaData(schema=SCHEMA)
