"""Settings of the standalone gateway (``python -m gateway``), read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

# Which address variable serves which services. A service whose variable is unset is not routed.
SERVICES_BY_ADDRESS_VAR: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "CONTEXTIQ_SESSIONS_ADDR": (
            "contextiq.auth.v1.ApiKeyService",
            "contextiq.sessions.v1.SessionService",
        ),
        "CONTEXTIQ_MEMORY_ADDR": (
            "contextiq.memory.v1.MemoryService",
            "contextiq.memory.v1.MemoryBankService",
            "contextiq.procedural.v1.ProceduralService",
            "google.longrunning.Operations",
        ),
        "CONTEXTIQ_EXTRACTION_ADDR": ("contextiq.extraction.v1.ExtractionService",),
    }
)
# The services exposed over REST (MemoryJobService is internal and has no bindings anyway).
DEFAULT_SERVICES: Final = tuple(
    name for names in SERVICES_BY_ADDRESS_VAR.values() for name in names
)


class SettingsError(ValueError):
    """An environment variable has an invalid value."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Typed, frozen settings of the standalone gateway.

    Attributes:
        host: CONTEXTIQ_HTTP_HOST, default 127.0.0.1.
        port: CONTEXTIQ_HTTP_PORT, default 8080.
        upstreams: Service full name → address, from the CONTEXTIQ_*_ADDR variables.
        request_timeout_s: CONTEXTIQ_HTTP_REQUEST_TIMEOUT_S, default 30.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    upstreams: Mapping[str, str] = field(default_factory=dict)
    request_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        """Reads the settings from an environment mapping.

        Raises:
            SettingsError: A value does not parse.
        """
        upstreams: dict[str, str] = {}
        for variable, services in SERVICES_BY_ADDRESS_VAR.items():
            address = env.get(variable, "").strip()
            if address:
                upstreams.update(dict.fromkeys(services, address))
        return cls(
            host=env.get("CONTEXTIQ_HTTP_HOST", "127.0.0.1"),
            port=int(_number(env, "CONTEXTIQ_HTTP_PORT", 8080, int)),
            upstreams=MappingProxyType(upstreams),
            request_timeout_s=_number(env, "CONTEXTIQ_HTTP_REQUEST_TIMEOUT_S", 30.0, float),
        )


def _number(env: Mapping[str, str], name: str, default: float, kind: type[float]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise SettingsError(f"{name}={raw!r} must not be negative")
    return value
