"""Alembic environment of the ``auth`` schema (API keys)."""

from ciq_runtime.db import alembic_env_run
from sessions_svc.apikeys import models

alembic_env_run(
    target_metadata=models.metadata,
    schema=models.SCHEMA,
    version_table=models.VERSION_TABLE,
)
