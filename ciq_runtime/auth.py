"""Authentication, authorisation and rate limiting of every RPC, in every service.

One server interceptor (:class:`AuthInterceptor`) runs in each service process, so a gRPC
client that bypasses the REST gateway meets the same rules:

1. **Authenticate** ``authorization: Bearer <JWT>`` (HS256; issuer, expiry, ``sub`` and
   ``org_id`` checked) or ``x-api-key: ck_…`` (resolved by an :class:`ApiKeyVerifier`: the
   sessions service looks keys up in its own table; other services ask it over gRPC and cache
   the answer for ``CONTEXTIQ_AUTH_CACHE_SECONDS``).
2. **Authorise** with the method's ``(contextiq.common.v1.method_auth)`` option read from the
   descriptors, before the handler runs (so a missing permission is PERMISSION_DENIED whether
   or not the resource exists). A ContextIQ method without the option is refused: the table
   fails closed.
3. **Rate-limit** per credential and per tenant (token buckets), answering
   RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` (the gateway turns it into
   ``Retry-After``).
4. **Bind** the :class:`~ciq_runtime.principal.Principal` for the handler, which reads its
   tenant from :func:`~ciq_runtime.principal.current_principal`.

Health and reflection are exempt. ``CONTEXTIQ_AUTH_DISABLED=true`` is the only way to turn
authentication off; every call then acts as an admin of the default tenant, and a warning is
logged at start.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import jwt
from google.protobuf import descriptor_pool

from ciq_runtime import telemetry
from ciq_runtime.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable
from ciq_runtime.interceptors import wrap_rpc_handler
from ciq_runtime.principal import DEFAULT_TENANT, Permission, Principal, bind_principal
from contextiq.common.v1 import auth_pb2

if TYPE_CHECKING:
    from ciq_runtime.settings import Settings

__all__ = [
    "API_KEY_PATTERN",
    "EXEMPT_SERVICES",
    "SERVICE_SUBJECT_PREFIX",
    "ApiKeyVerifier",
    "AuthInterceptor",
    "JwtVerifier",
    "MethodRule",
    "RateLimiter",
    "build_auth_interceptor",
    "generate_api_key",
    "hash_api_key",
    "method_rules",
    "parse_permissions",
]

log = logging.getLogger(__name__)

#: Services anyone may call: probes and tooling must work without credentials.
EXEMPT_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

#: JWT subjects of ContextIQ's own services (minted with the shared secret); not rate-limited.
SERVICE_SUBJECT_PREFIX = "service:"

#: ``ck_`` followed by at least 20 URL-safe characters.
API_KEY_PATTERN = re.compile(r"^ck_[A-Za-z0-9_-]{20,200}$")


@dataclass(frozen=True, slots=True)
class MethodRule:
    """How one method is authorised.

    Attributes:
        permission: Required permission; None means any authenticated caller.
        public: No credentials needed at all.
    """

    permission: Permission | None = None
    public: bool = False


# google.longrunning.Operations is vendored and cannot carry our option: any authenticated
# caller may use it, and the handlers confine it to the caller's tenant.
_BUILTIN_RULES: Mapping[str, MethodRule] = {"google.longrunning.Operations": MethodRule()}


def parse_permissions(names: Iterable[str], *, field: str | None = None) -> frozenset[Permission]:
    """Parse permission names ("SESSION_READ", …).

    Args:
        names: The names.
        field: When given, an unknown name raises INVALID_ARGUMENT naming this field;
            otherwise unknown names are ignored (tokens minted by newer issuers).

    Returns:
        The known permissions.
    """
    from ciq_runtime.errors import InvalidArgument

    parsed: set[Permission] = set()
    for name in names:
        try:
            parsed.add(Permission(name))
        except ValueError:
            if field is not None:
                raise InvalidArgument(
                    f"unknown permission {name!r}: expected one of "
                    + ", ".join(p.value for p in Permission),
                    field=field,
                ) from None
    return frozenset(parsed)


def method_rules(
    services: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None
) -> dict[str, MethodRule]:
    """Build the method → rule table of some services from their descriptors.

    Args:
        services: Fully-qualified service names served by the process.
        pool: Descriptor pool holding them; the default pool (generated modules) when omitted.

    Returns:
        ``"/pkg.Service/Method"`` → rule. Methods without the option are absent (refused).
    """
    pool = pool or descriptor_pool.Default()
    rules: dict[str, MethodRule] = {}
    for name in services:
        if name in EXEMPT_SERVICES:
            continue
        service = pool.FindServiceByName(name)
        for method in service.methods:
            path = f"/{name}/{method.name}"
            if name in _BUILTIN_RULES:
                rules[path] = _BUILTIN_RULES[name]
                continue
            options = method.GetOptions()
            if not options.HasExtension(auth_pb2.method_auth):
                continue
            spec = options.Extensions[auth_pb2.method_auth]
            permission = None
            if spec.permission != auth_pb2.PERMISSION_UNSPECIFIED:
                enum_name = auth_pb2.Permission.Name(spec.permission)
                permission = Permission(enum_name.removeprefix("PERMISSION_"))
            rules[path] = MethodRule(permission=permission, public=spec.public)
    return rules


def generate_api_key() -> str:
    """A new random API key (``ck_`` + 43 URL-safe characters, 256 bits)."""
    return "ck_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """SHA-256 (hex) of a key: the only form in which keys are stored or cached."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyVerifier(Protocol):
    """Resolves a plaintext API key to its principal."""

    async def verify(self, key: str) -> Principal:
        """Return the key's principal or raise :class:`Unauthenticated`."""
        ...


class JwtVerifier:
    """Verifies HS256 JWTs: signature, ``iss``, ``exp``, ``sub`` and ``org_id``."""

    def __init__(
        self,
        *,
        secret: str,
        issuer: str,
        leeway_s: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create the verifier.

        Args:
            secret: The shared HS256 secret (``CONTEXTIQ_JWT_SECRET``).
            issuer: The expected ``iss`` claim.
            leeway_s: Clock skew tolerated on ``exp`` / ``nbf``.
            cache_size: Verified tokens remembered (an agent sends the same token on every
                call; re-verifying the signature each time costs CPU on the hot path).
            clock: Wall clock (tests pass a fake one).
        """
        self._secret = secret
        self._issuer = issuer
        self._leeway = leeway_s
        self._cache_size = cache_size
        self._clock = clock
        # token -> (verified until, principal); a token is immutable, so until its expiry the
        # answer cannot change.
        self._cache: dict[str, tuple[float, Principal]] = {}

    def verify(self, token: str) -> Principal:
        """Return the token's principal.

        Raises:
            Unauthenticated: Bad signature, wrong issuer, expired, or missing claims.
        """
        cached = self._cache.get(token)
        if cached is not None:
            if cached[0] > self._clock():
                return cached[1]
            del self._cache[token]
        principal, expires = self._decode(token)
        if len(self._cache) >= self._cache_size:
            # Drop the oldest entry (dicts keep insertion order): bounded memory, no LRU cost.
            del self._cache[next(iter(self._cache))]
        self._cache[token] = (expires, principal)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", reason="CREDENTIALS_EXPIRED") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"the token's issuer is not {self._issuer!r}", reason="CREDENTIALS_INVALID"
            ) from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(
                f"the token is not valid: {exc}", reason="CREDENTIALS_INVALID"
            ) from None
        tenant = claims.get("org_id")
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated("the token has no org_id claim", reason="CREDENTIALS_INVALID")
        raw_permissions = claims.get("permissions", [])
        if not isinstance(raw_permissions, list):
            raise Unauthenticated(
                "the token's permissions claim is not a list", reason="CREDENTIALS_INVALID"
            )
        principal = Principal(
            tenant_id=tenant,
            subject=str(claims["sub"]),
            permissions=parse_permissions(str(p) for p in raw_permissions),
            kind="jwt",
        )
        # Cached only up to the real expiry (no leeway) and never past nbf-style surprises.
        return principal, float(claims["exp"])


class RateLimiter:
    """Token buckets per credential and per tenant, in this process.

    Each replica enforces its own buckets: with N replicas behind a load balancer a client
    can reach up to N times the configured rate (documented in the README).
    """

    def __init__(
        self,
        *,
        per_key_per_minute: int,
        per_tenant_per_minute: int,
        burst: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the limiter.

        Args:
            per_key_per_minute: Sustained rate per credential; 0 disables that limit.
            per_tenant_per_minute: Sustained rate per tenant; 0 disables that limit.
            burst: Bucket capacity as a multiple of the per-minute rate.
            clock: Monotonic clock (tests pass a fake one).
        """
        self._limits = {"key": per_key_per_minute, "tenant": per_tenant_per_minute}
        self._burst = burst
        self._clock = clock
        self._buckets: dict[tuple[str, str], list[float]] = {}
        self._checks = 0

    def check(self, principal: Principal) -> None:
        """Take one token from the credential's and the tenant's bucket.

        Raises:
            ResourceExhausted: With ``retry_after_s`` when a bucket is empty (nothing taken).
        """
        now = self._clock()
        credential = principal.key_id or principal.subject
        wanted = [("key", f"{principal.tenant_id}/{credential}"), ("tenant", principal.tenant_id)]
        buckets = []
        for scope, ident in wanted:
            rate = self._limits[scope]
            if rate <= 0:
                continue
            per_second = rate / 60.0
            capacity = rate * self._burst
            bucket = self._buckets.setdefault((scope, ident), [capacity, now])
            bucket[0] = min(capacity, bucket[0] + (now - bucket[1]) * per_second)
            bucket[1] = now
            if bucket[0] < 1.0:
                wait = (1.0 - bucket[0]) / per_second
                raise ResourceExhausted(
                    f"rate limit of {rate} requests per minute per {scope} exceeded: "
                    f"retry in {math.ceil(wait)} s",
                    reason="RATE_LIMITED",
                    metadata={"scope": scope, "limit_per_minute": str(rate)},
                    retry_after_s=wait,
                )
            buckets.append(bucket)
        for bucket in buckets:
            bucket[0] -= 1.0
        self._checks += 1
        if self._checks % 10_000 == 0:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        # A bucket idle for 10 minutes is full again: dropping it changes nothing and keeps
        # memory bounded by the number of active credentials.
        stale = [k for k, (_, last) in self._buckets.items() if now - last > 600]
        for key in stale:
            del self._buckets[key]


_AUTH_DISABLED = Principal(
    tenant_id=DEFAULT_TENANT,
    subject="anonymous",
    permissions=frozenset({Permission.ADMIN}),
    kind="auth_disabled",
)

_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Authenticates, authorises and rate-limits every RPC; binds the principal."""

    def __init__(
        self,
        *,
        rules: Mapping[str, MethodRule],
        jwt_verifier: JwtVerifier | None,
        api_keys: ApiKeyVerifier | None,
        limiter: RateLimiter | None,
        disabled: bool = False,
    ) -> None:
        """Create the interceptor.

        Args:
            rules: Method path → rule (see :func:`method_rules`).
            jwt_verifier: Verifier of bearer tokens; None refuses JWTs.
            api_keys: Verifier of API keys; None refuses API keys.
            limiter: Rate limiter; None disables rate limiting.
            disabled: Authentication switched off explicitly: every call is an admin of the
                default tenant.
        """
        self._rules = rules
        self._jwt = jwt_verifier
        self._api_keys = api_keys
        self._limiter = limiter
        self._disabled = disabled

    def guards(self, method: str) -> bool:
        """Every method but those of the exempt services (health, reflection) is checked."""
        return method.lstrip("/").partition("/")[0] not in EXEMPT_SERVICES

    async def enter(
        self, method: str, metadata: Sequence[tuple[str, str | bytes]]
    ) -> AbstractContextManager[object]:
        """Authorise one call (:meth:`authorize`); the context binding its principal.

        This is how :class:`~ciq_runtime.interceptors.RpcInterceptor` runs the checks
        (``default_interceptors(auth)``), as a :class:`~ciq_runtime.interceptors.CallGuard`.
        """
        principal = await self.authorize(method, metadata)
        return nullcontext() if principal is None else bind_principal(principal)

    async def intercept_service(
        self, continuation: _Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the handler of every non-exempt method in the auth scope (used standalone)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if not self.guards(method):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        return wrap_rpc_handler(handler, lambda _context: self._scope(method, metadata))

    @asynccontextmanager
    async def _scope(
        self, method: str, metadata: Sequence[tuple[str, str | bytes]]
    ) -> AsyncIterator[None]:
        with await self.enter(method, metadata):
            yield

    async def authorize(
        self, method: str, metadata: Sequence[tuple[str, str | bytes]]
    ) -> Principal | None:
        """Authenticate and authorise one call; None for public methods.

        Raises:
            Unauthenticated: Missing or bad credentials.
            PermissionDenied: Method without a rule, or permission missing.
            ResourceExhausted: Rate limit reached.
        """
        rule = self._rules.get(method)
        if rule is None:
            raise PermissionDenied(
                f"{method.lstrip('/')} has no authorisation rule", reason="METHOD_NOT_ALLOWED"
            )
        if rule.public:
            return None
        principal = _AUTH_DISABLED if self._disabled else await self._authenticate(metadata)
        if rule.permission is not None:
            principal.require(rule.permission)
        # Services acting for a tenant (the generation worker's "service:extraction" tokens)
        # are not limited: their calls follow from requests the tenant's own limits admitted.
        is_service = principal.subject.startswith(SERVICE_SUBJECT_PREFIX)
        if self._limiter is not None and not self._disabled and not is_service:
            self._limiter.check(principal)
        return principal

    async def _authenticate(self, metadata: Sequence[tuple[str, str | bytes]]) -> Principal:
        values = {k.lower(): v for k, v in metadata if isinstance(v, str)}
        authorization = values.get("authorization", "").strip()
        api_key = values.get("x-api-key", "").strip()
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "the authorization header must be 'Bearer <token>'",
                    reason="CREDENTIALS_INVALID",
                )
            if self._jwt is None:
                raise Unauthenticated(
                    "JWTs are not accepted here: CONTEXTIQ_JWT_SECRET is not set",
                    reason="CREDENTIALS_INVALID",
                )
            return self._jwt.verify(token.strip())
        if api_key:
            if not API_KEY_PATTERN.match(api_key):
                raise Unauthenticated("the API key is malformed", reason="CREDENTIALS_INVALID")
            if self._api_keys is None:
                raise Unauthenticated(
                    "API keys are not accepted here", reason="CREDENTIALS_INVALID"
                )
            return await self._api_keys.verify(api_key)
        raise Unauthenticated(
            "missing credentials: send 'authorization: Bearer <JWT>' or 'x-api-key: ck_…'",
            reason="CREDENTIALS_MISSING",
        )


class RemoteApiKeyVerifier:
    """Verifies keys through the sessions service's ``ApiKeyService.VerifyApiKey``, cached.

    Positive answers are cached by key hash for ``ttl_s`` (never past the key's expiry), so a
    revoked key stops working in other services within that time; failures are not cached.
    """

    def __init__(self, *, target: str, ttl_s: float, timeout_s: float = 5.0) -> None:
        """Create the verifier.

        Args:
            target: ``host:port`` of the sessions service.
            ttl_s: Cache lifetime of a verified key.
            timeout_s: Deadline of one verification call.
        """
        self._target = target
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def verify(self, key: str) -> Principal:
        """Return the key's principal or raise :class:`Unauthenticated`."""
        from contextiq.auth.v1 import api_key_service_pb2, api_key_service_pb2_grpc

        digest = hash_api_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._channel is None:
            # Traced: the verification shows in the trace of the call it authenticates.
            self._channel = telemetry.open_channel(self._target)
        stub = api_key_service_pb2_grpc.ApiKeyServiceStub(self._channel)
        try:
            reply = await stub.VerifyApiKey(
                api_key_service_pb2.VerifyApiKeyRequest(key=key), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(
                    exc.details() or "the API key is not valid", reason="CREDENTIALS_INVALID"
                ) from None
            raise Unavailable(
                "cannot verify the API key: the sessions service did not answer",
                reason="AUTH_BACKEND_UNAVAILABLE",
            ) from exc
        principal = Principal(
            tenant_id=reply.tenant_id,
            subject=f"api_key:{reply.key_id}",
            permissions=parse_permissions(reply.permissions),
            kind="api_key",
            key_id=reply.key_id,
        )
        until = now + self._ttl
        if reply.HasField("expires_at"):
            remaining = reply.expires_at.ToDatetime(UTC) - datetime.now(UTC)
            until = min(until, now + remaining.total_seconds())
        if until > now:
            self._cache[digest] = (until, principal)
        return principal

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def build_auth_interceptor(
    settings: Settings, *, services: Sequence[str], api_keys: ApiKeyVerifier | None = None
) -> AuthInterceptor:
    """Build the interceptor of a process from its settings.

    Args:
        settings: ``auth_disabled``, ``jwt_secret``, ``jwt_issuer``, the rate limits, and
            ``sessions_addr`` (where API keys are verified when ``api_keys`` is not given).
        services: Every service the process serves.
        api_keys: Local verifier (the process hosting ApiKeyService); otherwise a remote one
            is used when ``sessions_addr`` is set.

    Returns:
        The interceptor; pass it to ``default_interceptors(...)``.
    """
    if settings.auth_disabled:
        log.warning(
            "authentication is DISABLED (CONTEXTIQ_AUTH_DISABLED=true): every call acts as an "
            "admin of the default tenant; never do this on a reachable network"
        )
    verifier = api_keys
    if verifier is None and settings.sessions_addr:
        verifier = RemoteApiKeyVerifier(target=settings.sessions_addr, ttl_s=settings.auth_cache_s)
    limiter = None
    if settings.rate_limit_per_minute or settings.tenant_rate_limit_per_minute:
        limiter = RateLimiter(
            per_key_per_minute=settings.rate_limit_per_minute,
            per_tenant_per_minute=settings.tenant_rate_limit_per_minute,
            burst=settings.rate_limit_burst,
        )
    return AuthInterceptor(
        rules=method_rules(services),
        jwt_verifier=(
            JwtVerifier(secret=settings.jwt_secret, issuer=settings.jwt_issuer)
            if settings.jwt_secret
            else None
        ),
        api_keys=verifier,
        limiter=limiter,
        disabled=settings.auth_disabled,
    )
