"""Who is calling: the authenticated principal every handler acts for.

The auth interceptor authenticates each RPC (JWT or ``ck_`` API key), checks the method's
permission, and binds the :class:`Principal` for the duration of the handler. Handlers read it
with :func:`current_principal` and pass ``principal.tenant_id`` to every query, so no query can
forget the tenant: repositories take ``tenant_id`` as a required keyword argument.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ciq_runtime.errors import PermissionDenied, Unauthenticated
from ciq_runtime.logging import annotate_request

__all__ = [
    "DEFAULT_TENANT",
    "Permission",
    "Principal",
    "bind_principal",
    "current_principal",
    "maybe_principal",
]

#: The tenant of the bootstrap admin key and of every call when auth is disabled.
DEFAULT_TENANT = "default"


class Permission(enum.StrEnum):
    """What a principal may do; ADMIN implies every other permission."""

    SESSION_READ = "SESSION_READ"
    SESSION_WRITE = "SESSION_WRITE"
    MEMORY_READ = "MEMORY_READ"
    MEMORY_WRITE = "MEMORY_WRITE"
    PROCEDURAL_READ = "PROCEDURAL_READ"
    PROCEDURAL_WRITE = "PROCEDURAL_WRITE"
    ADMIN = "ADMIN"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    Attributes:
        tenant_id: The tenant every resource read or written belongs to (JWT ``org_id`` or the
            API key's tenant).
        subject: Who: the JWT ``sub``, ``api_key:<id>`` or ``service:<name>``.
        permissions: Granted permissions.
        kind: ``"jwt"``, ``"api_key"``, ``"service"`` or ``"auth_disabled"``.
        key_id: The API key id, for API-key principals (rate limiting is per key).
    """

    tenant_id: str
    subject: str
    permissions: frozenset[Permission] = field(default_factory=frozenset)
    kind: str = "jwt"
    key_id: str | None = None

    def has(self, permission: Permission) -> bool:
        """Whether the principal holds ``permission`` (ADMIN holds all)."""
        return Permission.ADMIN in self.permissions or permission in self.permissions

    def require(self, permission: Permission) -> None:
        """Raise PERMISSION_DENIED unless the principal holds ``permission``."""
        if not self.has(permission):
            raise PermissionDenied(
                f"this credential lacks the {permission} permission",
                reason="MISSING_PERMISSION",
                metadata={"permission": str(permission)},
            )


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "contextiq_principal", default=None
)


def current_principal() -> Principal:
    """The principal of the RPC being handled.

    Raises:
        Unauthenticated: Outside an authenticated RPC (a handler reached without the auth
            interceptor is a bug, and must fail closed).
    """
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no credentials were verified for this call")
    return principal


def maybe_principal() -> Principal | None:
    """The principal of the current RPC, or None outside one (logging, metrics)."""
    return _current.get()


@contextmanager
def bind_principal(principal: Principal) -> Iterator[Principal]:
    """Make ``principal`` current inside the block (the interceptor, tests, workers).

    The tenant and subject also join the request's log lines and trace span.
    """
    annotate_request(tenant_id=principal.tenant_id, principal=principal.subject)
    token = _current.set(principal)
    try:
        yield principal
    finally:
        _current.reset(token)
