"""gRPC clients of the worker: SessionService and MemoryJobService, as a service principal.

The worker acts for the tenant of each job. It authenticates with a short-lived HS256 JWT it
mints itself with the shared ``CONTEXTIQ_JWT_SECRET`` (``sub = service:extraction``,
``org_id = tenant``), cached per tenant until shortly before it expires. Every call has a
deadline. Errors are sorted for the job runner by :func:`classify`: what a retry can fix
(UNAVAILABLE, DEADLINE_EXCEEDED, …) becomes :class:`~extraction_svc.runner.RetryJob`, the rest
:class:`~extraction_svc.runner.FailJob` with the service's own ``google.rpc.Status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
import jwt
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ciq_runtime import telemetry
from ciq_runtime.auth import SERVICE_SUBJECT_PREFIX
from ciq_runtime.errors import FailedPrecondition
from contextiq.memory.v1 import memory_job_service_pb2_grpc
from contextiq.sessions.v1 import session_service_pb2_grpc
from extraction_svc.runner import FailJob, RetryJob

if TYPE_CHECKING:
    from ciq_runtime.settings import Settings
    from contextiq.memory.v1.memory_job_service_pb2_grpc import MemoryJobServiceAsyncStub
    from contextiq.sessions.v1.session_service_pb2_grpc import SessionServiceAsyncStub

__all__ = [
    "SERVICE_PERMISSIONS",
    "SERVICE_SUBJECT",
    "ServiceClients",
    "ServiceTokens",
    "classify",
]

log = logging.getLogger(__name__)

SERVICE_SUBJECT = f"{SERVICE_SUBJECT_PREFIX}extraction"
SERVICE_PERMISSIONS = ("SESSION_READ", "MEMORY_READ", "MEMORY_WRITE", "ADMIN")
MEMORY_JOB_SERVICE = "contextiq.memory.v1.MemoryJobService"
SESSION_SERVICE = "contextiq.sessions.v1.SessionService"

#: Codes a later delivery may succeed with: the service restarting or overloaded, a deadline,
#: a credential or deployment problem an operator fixes (the job is then replayable).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class ServiceTokens:
    """Mints and caches the worker's per-tenant service JWTs."""

    def __init__(
        self,
        *,
        secret: str,
        issuer: str,
        ttl_s: float = 300.0,
        clock: Any = time.time,
    ) -> None:
        """Create the minter.

        Args:
            secret: ``CONTEXTIQ_JWT_SECRET``.
            issuer: ``CONTEXTIQ_JWT_ISSUER``.
            ttl_s: Lifetime of a token; it is renewed when less than a third remains.
            clock: Wall clock (tests).
        """
        self._secret = secret
        self._issuer = issuer
        self._ttl = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}

    def token(self, tenant_id: str) -> str:
        """A valid token for ``tenant_id``."""
        now = self._clock()
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] - now > self._ttl / 3:
            return cached[1]
        expires = now + self._ttl
        token = jwt.encode(
            {
                "sub": SERVICE_SUBJECT,
                "org_id": tenant_id,
                "permissions": list(SERVICE_PERMISSIONS),
                "iss": self._issuer,
                "iat": int(now),
                "exp": int(expires),
            },
            self._secret,
            algorithm="HS256",
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[tenant_id] = (expires, token)
        return token


def classify(error: grpc.aio.AioRpcError, *, service: str) -> RetryJob | FailJob:
    """What the job runner should do about a failed call."""
    status = rpc_status.from_call(error)
    if status is None:
        status = status_pb2.Status(
            code=error.code().value[0], message=f"{service}: {error.details() or error.code().name}"
        )
    if error.code() in RETRYABLE:
        return RetryJob(status)
    return FailJob(status)


class ServiceClients:
    """Channels and stubs to the sessions and memory services."""

    def __init__(self, settings: Settings, *, memory_addr: str, sessions_addr: str) -> None:
        """Prepare the clients; channels open on :meth:`start`.

        Raises:
            FailedPrecondition: Authentication is on and no JWT secret is configured.
        """
        self._memory_addr = memory_addr
        self._sessions_addr = sessions_addr
        self.timeout_s = settings.worker_rpc_timeout_s
        self._tokens: ServiceTokens | None = None
        if not settings.auth_disabled:
            if not settings.jwt_secret:
                raise FailedPrecondition(
                    "the memory generation worker needs CONTEXTIQ_JWT_SECRET (shared with the "
                    "sessions and memory services) to call them for each tenant; set it or "
                    "CONTEXTIQ_WORKER_ENABLED=false"
                )
            self._tokens = ServiceTokens(secret=settings.jwt_secret, issuer=settings.jwt_issuer)
        self._channels: list[grpc.aio.Channel] = []
        self._memory: MemoryJobServiceAsyncStub | None = None
        self._sessions: SessionServiceAsyncStub | None = None
        self._health: list[tuple[str, health_pb2_grpc.HealthStub]] = []

    async def start(self) -> None:
        """Open the channels (lazily connecting)."""
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        # Traced channels: each call is a CLIENT span that carries the job's trace onward.
        memory = telemetry.open_channel(self._memory_addr, options=options)
        sessions = (
            memory
            if self._sessions_addr == self._memory_addr
            else telemetry.open_channel(self._sessions_addr, options=options)
        )
        self._channels = list(dict.fromkeys([memory, sessions]))
        self._memory = memory_job_service_pb2_grpc.MemoryJobServiceStub(memory)  # type: ignore[assignment]
        self._sessions = session_service_pb2_grpc.SessionServiceStub(sessions)  # type: ignore[assignment]
        self._health = [
            (MEMORY_JOB_SERVICE, health_pb2_grpc.HealthStub(memory)),
            (SESSION_SERVICE, health_pb2_grpc.HealthStub(sessions)),
        ]

    async def close(self) -> None:
        """Close the channels."""
        for channel in self._channels:
            await channel.close()
        self._channels = []

    @property
    def memory(self) -> MemoryJobServiceAsyncStub:
        """MemoryJobService stub."""
        assert self._memory is not None, "ServiceClients.start() has not run"
        return self._memory

    @property
    def sessions(self) -> SessionServiceAsyncStub:
        """SessionService stub."""
        assert self._sessions is not None, "ServiceClients.start() has not run"
        return self._sessions

    def metadata(
        self, tenant_id: str, headers: Mapping[str, str] | None = None
    ) -> tuple[tuple[str, str], ...]:
        """Call metadata acting for ``tenant_id``; W3C trace headers of the job pass along."""
        md: list[tuple[str, str]] = []
        if self._tokens is not None:
            md.append(("authorization", f"Bearer {self._tokens.token(tenant_id)}"))
        for name in ("traceparent", "tracestate"):
            value = (headers or {}).get(name)
            if value:
                md.append((name, value))
        return tuple(md)

    async def wait_ready(
        self,
        services: tuple[str, ...] = (MEMORY_JOB_SERVICE,),
        *,
        poll_s: float = 0.5,
        log_after_s: float = 10.0,
    ) -> None:
        """Return once ``services`` report SERVING through gRPC health (polls forever).

        Only the memory service by default: every job needs it (a session source also needs
        SessionService, whose outages are retried per job like any other).
        """
        started = time.monotonic()
        warned = False
        for name, health in self._health:
            if name not in services:
                continue
            while True:
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=name), timeout=2.0
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                if not warned and time.monotonic() - started > log_after_s:
                    warned = True
                    log.warning("the worker is waiting for %s to be SERVING", name)
                await asyncio.sleep(poll_s)


def unavailable(message: str) -> RetryJob:
    """A retryable failure that did not come from a call."""
    return RetryJob(status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message))
