"""Alembic environment of procedural memory: schema ``procedural``, its own version table."""

from ciq_runtime.db import alembic_env_run
from memory_svc.procedural import models

alembic_env_run(
    target_metadata=models.metadata,
    schema=models.SCHEMA,
    version_table=models.VERSION_TABLE,
)
