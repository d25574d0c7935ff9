"""Fixtures of the gateway's unit tests (no sockets): the compiled showcase and its routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bindings import find_services, service_bindings
from gateway.routes import Route, build_route
from tests.protos.showcase import SERVICE, Showcase, compile_showcase


@pytest.fixture(scope="session")
def showcase(tmp_path_factory: pytest.TempPathFactory) -> Showcase:
    """The compiled showcase proto."""
    return compile_showcase(Path(tmp_path_factory.mktemp("showcase")))


@pytest.fixture(scope="session")
def showcase_routes(showcase: Showcase) -> list[Route]:
    """Every route of the showcase, towards a placeholder address."""
    (service,) = find_services([SERVICE])
    return [build_route(binding, "upstream:1") for binding in service_bindings(service)]
