"""Credentials for tests: JWTs signed with the test secret, as gRPC metadata or HTTP headers."""

from __future__ import annotations

import time

import jwt

TEST_JWT_SECRET = "test-secret-not-for-production-0123456789"
TEST_ISSUER = "contextiq"


def make_jwt(
    tenant: str,
    *permissions: str,
    subject: str = "test-user",
    ttl_s: float = 3600.0,
    secret: str = TEST_JWT_SECRET,
    issuer: str = TEST_ISSUER,
) -> str:
    """A signed HS256 token for ``tenant`` with ``permissions`` (ADMIN when none given)."""
    now = int(time.time())
    claims = {
        "sub": subject,
        "org_id": tenant,
        "permissions": list(permissions) or ["ADMIN"],
        "iss": issuer,
        "iat": now,
        "exp": now + int(ttl_s),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(tenant: str, *permissions: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata authenticating as ``tenant`` with ``permissions`` (ADMIN when none)."""
    return (("authorization", f"Bearer {make_jwt(tenant, *permissions)}"),)


def bearer_headers(tenant: str, *permissions: str) -> dict[str, str]:
    """HTTP headers authenticating as ``tenant`` with ``permissions`` (ADMIN when none)."""
    return {"Authorization": f"Bearer {make_jwt(tenant, *permissions)}"}
