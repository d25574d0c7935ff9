"""Assembles the API-key component: servicer, verifier, schema ``auth`` and the bootstrap key."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ciq_runtime.auth import API_KEY_PATTERN, generate_api_key, hash_api_key
from ciq_runtime.component_kit import PostgresResource, service_spec
from ciq_runtime.principal import DEFAULT_TENANT, Permission
from ciq_runtime.server import Component
from ciq_runtime.settings import ConfigError, Settings
from contextiq.auth.v1 import api_key_service_pb2_grpc
from sessions_svc.apikeys import models
from sessions_svc.apikeys.repository import ApiKeyRepository
from sessions_svc.apikeys.service import ApiKeyServicer, LocalApiKeyVerifier

__all__ = ["ApiKeys", "build_apikeys"]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Bootstrap keys get a stable id derived from their hash, so restarts never duplicate them.
_BOOTSTRAP_NAMESPACE = uuid.UUID("6f1c8f0e-7a51-4f0a-9a54-2b2a3c1d9e11")


@dataclass
class ApiKeys:
    """The API-key component and what the process needs from it."""

    component: Component
    verifier: LocalApiKeyVerifier
    repo: ApiKeyRepository

    async def ensure_admin_key(self) -> str | None:
        """Create an admin key for the default tenant when it has none; return its plaintext.

        ``make run`` without ``CONTEXTIQ_BOOTSTRAP_API_KEY`` prints the key once so a new
        user can call the API; afterwards the tenant has an admin key and None is returned.
        """
        now = datetime.now(UTC)
        if await self.repo.has_active_admin(tenant_id=DEFAULT_TENANT, now=now):
            return None
        key = generate_api_key()
        await self.repo.create(
            tenant_id=DEFAULT_TENANT,
            key_hash=hash_api_key(key),
            key_prefix=key[:8],
            display_name="first admin key (make run)",
            permissions=[Permission.ADMIN.value],
            expires_at=None,
            created_by="make run",
        )
        return key


def build_apikeys(settings: Settings) -> ApiKeys:
    """Build the API-key component.

    Args:
        settings: Process settings: ``database_url``, ``bootstrap_api_key``.

    Returns:
        The component (schema ``auth`` migrated and bootstrap key seeded on start) and its
        local verifier for the process's auth interceptor.

    Raises:
        ConfigError: ``CONTEXTIQ_BOOTSTRAP_API_KEY`` is not a ``ck_`` key.
    """
    bootstrap = settings.bootstrap_api_key
    if bootstrap is not None and not API_KEY_PATTERN.match(bootstrap):
        raise ConfigError(
            "CONTEXTIQ_BOOTSTRAP_API_KEY must look like ck_ followed by at least 20 letters, "
            "digits, '-' or '_'"
        )
    db = PostgresResource(
        settings,
        script_location=MIGRATIONS,
        schema=models.SCHEMA,
        version_table=models.VERSION_TABLE,
    )
    repo = ApiKeyRepository(db)

    async def start() -> None:
        await db.start()
        if bootstrap is not None:
            digest = hash_api_key(bootstrap)
            created = await repo.create(
                tenant_id=DEFAULT_TENANT,
                key_hash=digest,
                key_prefix=bootstrap[:8],
                display_name="bootstrap (CONTEXTIQ_BOOTSTRAP_API_KEY)",
                permissions=[Permission.ADMIN.value],
                expires_at=None,
                created_by="CONTEXTIQ_BOOTSTRAP_API_KEY",
                key_id=uuid.uuid5(_BOOTSTRAP_NAMESPACE, digest),
            )
            if created is not None:
                log.info("seeded the bootstrap admin key %s… for the default tenant", bootstrap[:8])

    component = Component(
        name="apikeys",
        services=[
            service_spec(
                "contextiq.auth.v1.ApiKeyService",
                ApiKeyServicer(repo),
                api_key_service_pb2_grpc.add_ApiKeyServiceServicer_to_server,
            )
        ],
        on_start=start,
        on_stop=db.stop,
        health_checks={"postgres": db.ping},
    )
    return ApiKeys(component=component, verifier=LocalApiKeyVerifier(repo), repo=repo)
