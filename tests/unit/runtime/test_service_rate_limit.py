"""Service principals (the generation worker) are authenticated and authorised like anyone,
but not rate-limited: their calls follow from requests the tenant's limits already admitted."""

from __future__ import annotations

import pytest

from ciq_runtime.auth import AuthInterceptor, JwtVerifier, MethodRule, RateLimiter
from ciq_runtime.errors import PermissionDenied, ResourceExhausted
from ciq_runtime.principal import Permission
from tests.auth_helpers import TEST_ISSUER, TEST_JWT_SECRET, make_jwt

METHOD = "/contextiq.memory.v1.MemoryJobService/ApplyGeneration"


def _interceptor() -> AuthInterceptor:
    return AuthInterceptor(
        rules={METHOD: MethodRule(permission=Permission.ADMIN)},
        jwt_verifier=JwtVerifier(secret=TEST_JWT_SECRET, issuer=TEST_ISSUER),
        api_keys=None,
        limiter=RateLimiter(per_key_per_minute=2, per_tenant_per_minute=2, burst=1),
    )


async def test_service_tokens_are_not_rate_limited() -> None:
    interceptor = _interceptor()
    token = make_jwt("acme", "ADMIN", subject="service:extraction")
    for _ in range(20):
        principal = await interceptor.authorize(METHOD, [("authorization", f"Bearer {token}")])
        assert principal is not None
        assert principal.tenant_id == "acme"


async def test_other_callers_still_are() -> None:
    interceptor = _interceptor()
    token = make_jwt("acme", "ADMIN", subject="agent-7")
    metadata = [("authorization", f"Bearer {token}")]
    await interceptor.authorize(METHOD, metadata)
    await interceptor.authorize(METHOD, metadata)
    with pytest.raises(ResourceExhausted):
        await interceptor.authorize(METHOD, metadata)


async def test_service_tokens_still_need_the_permission() -> None:
    token = make_jwt("acme", "MEMORY_READ", subject="service:extraction")
    with pytest.raises(PermissionDenied):
        await _interceptor().authorize(METHOD, [("authorization", f"Bearer {token}")])
