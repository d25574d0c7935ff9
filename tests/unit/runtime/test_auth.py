"""Authentication pieces that need no server: JWTs, permission rules, the rate limiter."""

from __future__ import annotations

import time

import jwt
import pytest

from ciq_runtime.auth import (
    API_KEY_PATTERN,
    EXEMPT_SERVICES,
    JwtVerifier,
    MethodRule,
    RateLimiter,
    generate_api_key,
    hash_api_key,
    method_rules,
    parse_permissions,
)
from ciq_runtime.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from ciq_runtime.principal import (
    Permission,
    Principal,
    bind_principal,
    current_principal,
    maybe_principal,
)
from tests.auth_helpers import TEST_JWT_SECRET, make_jwt

VERIFIER = JwtVerifier(secret=TEST_JWT_SECRET, issuer="contextiq", leeway_s=0)


def test_valid_jwt_gives_tenant_subject_and_permissions() -> None:
    principal = VERIFIER.verify(make_jwt("acme", "SESSION_READ", "MEMORY_WRITE", subject="ana"))
    assert principal.tenant_id == "acme"
    assert principal.subject == "ana"
    assert principal.permissions == {Permission.SESSION_READ, Permission.MEMORY_WRITE}
    assert principal.has(Permission.SESSION_READ)
    assert not principal.has(Permission.ADMIN)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (make_jwt("acme", ttl_s=-60), "CREDENTIALS_EXPIRED"),
        (make_jwt("acme", issuer="someone-else"), "CREDENTIALS_INVALID"),
        (make_jwt("acme", secret="another-secret-of-enough-length-xx"), "CREDENTIALS_INVALID"),
        ("not.a.jwt", "CREDENTIALS_INVALID"),
        (make_jwt(""), "CREDENTIALS_INVALID"),
    ],
)
def test_bad_jwts_are_unauthenticated(token: str, reason: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        VERIFIER.verify(token)
    assert info.value.reason == reason


def test_admin_implies_every_permission() -> None:
    admin = Principal(tenant_id="t", subject="s", permissions=frozenset({Permission.ADMIN}))
    assert all(admin.has(p) for p in Permission)


def test_current_principal_fails_closed_outside_an_rpc() -> None:
    assert maybe_principal() is None
    with pytest.raises(Unauthenticated):
        current_principal()
    who = Principal(tenant_id="t", subject="s")
    with bind_principal(who):
        assert current_principal() is who
    assert maybe_principal() is None


def test_permission_names_parse_strictly_when_a_field_is_named() -> None:
    assert parse_permissions(["ADMIN", "NOPE"]) == {Permission.ADMIN}
    with pytest.raises(InvalidArgument) as info:
        parse_permissions(["ADMIN", "NOPE"], field="permissions")
    assert info.value.field == "permissions"


def test_api_keys_are_random_and_hashed() -> None:
    first, second = generate_api_key(), generate_api_key()
    assert first != second
    assert API_KEY_PATTERN.match(first)
    assert hash_api_key(first) != first
    assert len(hash_api_key(first)) == 64


def test_every_contextiq_rpc_has_an_authorisation_rule() -> None:
    services = [
        "contextiq.auth.v1.ApiKeyService",
        "contextiq.sessions.v1.SessionService",
        "contextiq.memory.v1.MemoryService",
        "contextiq.memory.v1.MemoryBankService",
        "contextiq.memory.v1.MemoryJobService",
        "contextiq.procedural.v1.ProceduralService",
        "contextiq.extraction.v1.ExtractionService",
        "google.longrunning.Operations",
    ]
    from google.protobuf import descriptor_pool

    import contextiq.auth.v1.api_key_service_pb2
    import contextiq.extraction.v1.extraction_service_pb2
    import contextiq.memory.v1.memory_job_service_pb2
    import contextiq.memory.v1.memory_service_pb2
    import contextiq.procedural.v1.procedural_service_pb2
    import contextiq.sessions.v1.session_service_pb2  # noqa: F401

    rules = method_rules(services)
    pool = descriptor_pool.Default()
    for name in services:
        for method in pool.FindServiceByName(name).methods:
            assert f"/{name}/{method.name}" in rules, method.full_name
    assert rules["/contextiq.sessions.v1.SessionService/AppendEvent"] == MethodRule(
        permission=Permission.SESSION_WRITE
    )
    assert rules["/contextiq.sessions.v1.SessionService/ListEvents"].permission == (
        Permission.SESSION_READ
    )
    assert rules["/contextiq.memory.v1.MemoryJobService/ApplyGeneration"].permission == (
        Permission.ADMIN
    )
    assert rules["/contextiq.auth.v1.ApiKeyService/VerifyApiKey"].public
    assert method_rules(EXEMPT_SERVICES) == {}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_the_burst_then_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_key_per_minute=60, per_tenant_per_minute=0, burst=2, clock=clock)
    caller = Principal(tenant_id="t", subject="s", key_id="k1")
    for _ in range(120):  # burst = 2x the per-minute rate
        limiter.check(caller)
    with pytest.raises(ResourceExhausted) as info:
        limiter.check(caller)
    assert info.value.retry_after_s == pytest.approx(1.0)
    assert info.value.reason == "RATE_LIMITED"
    clock.now += 1.0  # 60/min = one token per second
    limiter.check(caller)
    # Another key of the same tenant has its own bucket.
    limiter.check(Principal(tenant_id="t", subject="s2", key_id="k2"))


def test_tenant_bucket_is_shared_by_the_tenants_keys() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_key_per_minute=0, per_tenant_per_minute=3, burst=1, clock=clock)
    for key in ("a", "b", "c"):
        limiter.check(Principal(tenant_id="t", subject=key, key_id=key))
    with pytest.raises(ResourceExhausted):
        limiter.check(Principal(tenant_id="t", subject="d", key_id="d"))
    limiter.check(Principal(tenant_id="other", subject="a", key_id="a"))


def test_verified_tokens_are_cached_until_their_expiry() -> None:
    verifier = JwtVerifier(secret=TEST_JWT_SECRET, issuer="contextiq", leeway_s=0)
    token = make_jwt("acme", "SESSION_READ", ttl_s=1)
    first = verifier.verify(token)
    assert verifier.verify(token) is first  # served from the cache
    # Past its exp (a known instant), the cache must not extend the token's life.
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    assert info.value.reason == "CREDENTIALS_EXPIRED"


def test_token_cache_is_bounded() -> None:
    verifier = JwtVerifier(secret=TEST_JWT_SECRET, issuer="contextiq", cache_size=3)
    tokens = [make_jwt("acme", subject=f"user-{i}") for i in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert len(verifier._cache) == 3
