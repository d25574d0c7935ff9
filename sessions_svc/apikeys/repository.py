"""SQL of the ``auth.api_keys`` table. Every method but :meth:`find_by_hash` takes the tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from ciq_runtime.component_kit import PostgresResource
from ciq_runtime.db import transaction
from sessions_svc.apikeys.models import api_keys

__all__ = ["ApiKeyRepository", "ApiKeyRow"]


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """One stored key (without any secret)."""

    id: uuid.UUID
    tenant_id: str
    key_prefix: str
    display_name: str
    permissions: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str

    def active_at(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


_COLUMNS = [
    api_keys.c.id,
    api_keys.c.tenant_id,
    api_keys.c.key_prefix,
    api_keys.c.display_name,
    api_keys.c.permissions,
    api_keys.c.created_at,
    api_keys.c.expires_at,
    api_keys.c.revoked_at,
    api_keys.c.created_by,
]


def _row(mapping: object) -> ApiKeyRow:
    return ApiKeyRow(**dict(mapping))  # type: ignore[call-overload]


class ApiKeyRepository:
    """Reads and writes API keys."""

    def __init__(self, db: PostgresResource) -> None:
        """Create the repository over the service's database (opened later, on start)."""
        self._db = db

    async def create(
        self,
        *,
        tenant_id: str,
        key_hash: str,
        key_prefix: str,
        display_name: str,
        permissions: list[str],
        expires_at: datetime | None,
        created_by: str,
        key_id: uuid.UUID | None = None,
    ) -> ApiKeyRow | None:
        """Insert a key; None when a key with the same hash already exists (bootstrap reruns)."""
        statement = (
            insert(api_keys)
            .values(
                id=key_id or uuid.uuid4(),
                tenant_id=tenant_id,
                key_hash=key_hash,
                key_prefix=key_prefix,
                display_name=display_name,
                permissions=permissions,
                expires_at=expires_at,
                created_by=created_by,
            )
            .on_conflict_do_nothing(index_elements=[api_keys.c.key_hash])
            .returning(*_COLUMNS)
        )
        async with transaction(self._db.sessions) as session:
            found = (await session.execute(statement)).mappings().first()
        return None if found is None else _row(found)

    async def get(self, *, tenant_id: str, key_id: uuid.UUID) -> ApiKeyRow | None:
        """The tenant's key, or None (another tenant's key is never returned)."""
        statement = select(*_COLUMNS).where(
            api_keys.c.tenant_id == tenant_id, api_keys.c.id == key_id
        )
        async with self._db.sessions() as session:
            found = (await session.execute(statement)).mappings().first()
        return None if found is None else _row(found)

    async def list(
        self,
        *,
        tenant_id: str,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
        show_inactive: bool,
        now: datetime,
    ) -> list[ApiKeyRow]:
        """The tenant's keys, newest first, after a keyset position."""
        statement = select(*_COLUMNS).where(api_keys.c.tenant_id == tenant_id)
        if not show_inactive:
            statement = statement.where(
                api_keys.c.revoked_at.is_(None),
                or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
            )
        if after is not None:
            statement = statement.where(
                tuple_(api_keys.c.created_at, api_keys.c.id) < tuple_(after[0], after[1])
            )
        statement = statement.order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc())
        async with self._db.sessions() as session:
            rows = (await session.execute(statement.limit(limit))).mappings().all()
        return [_row(r) for r in rows]

    async def revoke(self, *, tenant_id: str, key_id: uuid.UUID, now: datetime) -> ApiKeyRow | None:
        """Revoke the tenant's key (keeping the first revocation time); None if unknown."""
        statement = (
            update(api_keys)
            .where(
                api_keys.c.tenant_id == tenant_id,
                api_keys.c.id == key_id,
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        async with transaction(self._db.sessions) as session:
            await session.execute(statement)
        return await self.get(tenant_id=tenant_id, key_id=key_id)

    async def find_by_hash(self, key_hash: str) -> ApiKeyRow | None:
        """The key with this hash, whatever its tenant: the key is what names the tenant."""
        statement = select(*_COLUMNS).where(api_keys.c.key_hash == key_hash)
        async with self._db.sessions() as session:
            found = (await session.execute(statement)).mappings().first()
        return None if found is None else _row(found)

    async def has_active_admin(self, *, tenant_id: str, now: datetime) -> bool:
        """Whether the tenant has an active key holding ADMIN."""
        statement = select(
            exists().where(
                and_(
                    api_keys.c.tenant_id == tenant_id,
                    api_keys.c.permissions.any("ADMIN"),
                    api_keys.c.revoked_at.is_(None),
                    or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
                )
            )
        )
        async with self._db.sessions() as session:
            return bool((await session.execute(statement)).scalar())
