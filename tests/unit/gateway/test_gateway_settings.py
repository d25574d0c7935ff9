"""Settings of the standalone gateway."""

from __future__ import annotations

import pytest

from gateway.settings import DEFAULT_SERVICES, GatewaySettings, SettingsError


def test_defaults() -> None:
    settings = GatewaySettings.from_env({})

    assert (settings.host, settings.port, dict(settings.upstreams)) == ("127.0.0.1", 8080, {})
    assert settings.request_timeout_s == 30.0


def test_addresses_route_their_services() -> None:
    settings = GatewaySettings.from_env(
        {
            "CONTEXTIQ_HTTP_HOST": "0.0.0.0",
            "CONTEXTIQ_HTTP_PORT": "9000",
            "CONTEXTIQ_MEMORY_ADDR": "mem:50051",
            "CONTEXTIQ_EXTRACTION_ADDR": " ",
        }
    )

    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert dict(settings.upstreams) == {
        "contextiq.memory.v1.MemoryService": "mem:50051",
        "contextiq.memory.v1.MemoryBankService": "mem:50051",
        "contextiq.procedural.v1.ProceduralService": "mem:50051",
        "google.longrunning.Operations": "mem:50051",
    }


def test_memory_job_service_is_never_exposed() -> None:
    assert "contextiq.memory.v1.MemoryJobService" not in DEFAULT_SERVICES
    assert set(DEFAULT_SERVICES) == {
        "contextiq.auth.v1.ApiKeyService",
        "contextiq.sessions.v1.SessionService",
        "contextiq.memory.v1.MemoryService",
        "contextiq.memory.v1.MemoryBankService",
        "contextiq.procedural.v1.ProceduralService",
        "contextiq.extraction.v1.ExtractionService",
        "google.longrunning.Operations",
    }


@pytest.mark.parametrize("port", ["http", "-1"])
def test_bad_port(port: str) -> None:
    with pytest.raises(SettingsError, match="CONTEXTIQ_HTTP_PORT"):
        GatewaySettings.from_env({"CONTEXTIQ_HTTP_PORT": port})
