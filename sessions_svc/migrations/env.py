"""Alembic environment of the sessions service: its own schema and version table."""

from ciq_runtime.db import alembic_env_run
from sessions_svc import models

alembic_env_run(
    target_metadata=models.metadata,
    schema=models.SCHEMA,
    version_table=models.VERSION_TABLE,
)
