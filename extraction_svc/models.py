"""Tables owned by the extraction service (Postgres schema ``extraction``).

No other service reads or writes these tables; they reach extraction only over gRPC.
"""

from sqlalchemy import MetaData

SCHEMA = "extraction"
VERSION_TABLE = "alembic_version_extraction"

metadata = MetaData(schema=SCHEMA)
