"""ApiKeyService servicer and the local key verifier of the sessions process."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ciq_runtime.auth import API_KEY_PATTERN, generate_api_key, hash_api_key, parse_permissions
from ciq_runtime.errors import InvalidArgument, NotFound, Unauthenticated
from ciq_runtime.pagination import encode_page_token, page_request
from ciq_runtime.principal import Principal, current_principal
from contextiq.auth.v1 import api_key_service_pb2 as pb
from contextiq.auth.v1 import api_key_service_pb2_grpc
from sessions_svc.apikeys.repository import ApiKeyRepository, ApiKeyRow
from sessions_svc.convert import to_timestamp
from sessions_svc.validation import parse_uuid

__all__ = ["ApiKeyServicer", "LocalApiKeyVerifier"]

_MAX_NAME = 200
_PREFIX_CHARS = 8  # "ck_" + 5 characters: enough to recognise a key, useless to guess it


def _timestamp(value: datetime | None) -> Timestamp | None:
    return None if value is None else to_timestamp(value)


def _to_proto(row: ApiKeyRow) -> pb.ApiKey:
    return pb.ApiKey(
        id=str(row.id),
        display_name=row.display_name,
        permissions=row.permissions,
        key_prefix=row.key_prefix + "…",
        tenant_id=row.tenant_id,
        created_at=_timestamp(row.created_at),
        expires_at=_timestamp(row.expires_at),
        revoked_at=_timestamp(row.revoked_at),
        created_by=row.created_by,
    )


def _key_id(raw: str) -> uuid.UUID:
    return parse_uuid(raw, field="id", what="API key id")


def _principal_of(row: ApiKeyRow) -> Principal:
    return Principal(
        tenant_id=row.tenant_id,
        subject=f"api_key:{row.id}",
        permissions=parse_permissions(row.permissions),
        kind="api_key",
        key_id=str(row.id),
    )


async def _resolve(repo: ApiKeyRepository, key: str) -> ApiKeyRow:
    if not API_KEY_PATTERN.match(key):
        raise Unauthenticated("the API key is malformed", reason="CREDENTIALS_INVALID")
    row = await repo.find_by_hash(hash_api_key(key))
    if row is None:
        raise Unauthenticated("the API key is not valid", reason="CREDENTIALS_INVALID")
    if row.revoked_at is not None:
        raise Unauthenticated("the API key has been revoked", reason="CREDENTIALS_REVOKED")
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        raise Unauthenticated("the API key has expired", reason="CREDENTIALS_EXPIRED")
    return row


class LocalApiKeyVerifier:
    """Verifies keys against the table directly (no cache: revocation is immediate)."""

    def __init__(self, repo: ApiKeyRepository) -> None:
        """Create the verifier over the repository."""
        self._repo = repo

    async def verify(self, key: str) -> Principal:
        """Return the key's principal or raise :class:`Unauthenticated`."""
        return _principal_of(await _resolve(self._repo, key))


class ApiKeyServicer(api_key_service_pb2_grpc.ApiKeyServiceServicer):
    """Create, list, get, revoke and verify API keys; everything per the caller's tenant."""

    def __init__(self, repo: ApiKeyRepository) -> None:
        """Create the servicer over the repository."""
        self._repo = repo

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        """Create a key; its plaintext appears only in this response."""
        principal = current_principal()
        if not request.permissions:
            raise InvalidArgument(
                "permissions must name at least one permission", field="permissions"
            )
        permissions = sorted(parse_permissions(request.permissions, field="permissions"))
        if len(request.display_name) > _MAX_NAME:
            raise InvalidArgument(
                f"display_name is longer than {_MAX_NAME} characters", field="display_name"
            )
        expires_at = None
        if request.HasField("ttl"):
            ttl = request.ttl.ToTimedelta()
            if ttl <= timedelta(0):
                raise InvalidArgument("ttl must be positive", field="ttl")
            expires_at = datetime.now(UTC) + ttl
        key = generate_api_key()
        row = await self._repo.create(
            tenant_id=principal.tenant_id,
            key_hash=hash_api_key(key),
            key_prefix=key[:_PREFIX_CHARS],
            display_name=request.display_name,
            permissions=[str(p) for p in permissions],
            expires_at=expires_at,
            created_by=principal.subject,
        )
        assert row is not None  # 256 random bits do not collide
        return pb.CreateApiKeyResponse(api_key=_to_proto(row), key=key)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApiKeysResponse:
        """The caller's tenant's keys, newest first."""
        principal = current_principal()
        params = {"show_inactive": request.show_inactive}
        page = page_request(
            page_size=request.page_size, page_token=request.page_token, params=params
        )
        after = None
        if page.after is not None:
            try:
                after = (datetime.fromisoformat(page.after[0]), uuid.UUID(page.after[1]))
            except (ValueError, IndexError, TypeError):
                raise InvalidArgument("page_token is malformed", field="page_token") from None
        rows = await self._repo.list(
            tenant_id=principal.tenant_id,
            limit=page.size + 1,
            after=after,
            show_inactive=request.show_inactive,
            now=datetime.now(UTC),
        )
        token = ""
        if len(rows) > page.size:
            rows = rows[: page.size]
            last = rows[-1]
            token = encode_page_token(
                last_sort_key=[last.created_at.isoformat(), str(last.id)], params=params
            )
        return pb.ListApiKeysResponse(api_keys=[_to_proto(r) for r in rows], next_page_token=token)

    async def GetApiKey(
        self, request: pb.GetApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApiKey:
        """One key of the caller's tenant."""
        principal = current_principal()
        row = await self._repo.get(tenant_id=principal.tenant_id, key_id=_key_id(request.id))
        if row is None:
            raise NotFound(f"API key {request.id} not found")
        return _to_proto(row)

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApiKey:
        """Revoke a key of the caller's tenant (revoking twice keeps the first time)."""
        principal = current_principal()
        row = await self._repo.revoke(
            tenant_id=principal.tenant_id, key_id=_key_id(request.id), now=datetime.now(UTC)
        )
        if row is None:
            raise NotFound(f"API key {request.id} not found")
        return _to_proto(row)

    async def VerifyApiKey(
        self, request: pb.VerifyApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyApiKeyResponse:
        """Resolve a key for another service's interceptor."""
        row = await _resolve(self._repo, request.key)
        return pb.VerifyApiKeyResponse(
            key_id=str(row.id),
            tenant_id=row.tenant_id,
            permissions=row.permissions,
            expires_at=_timestamp(row.expires_at),
        )
