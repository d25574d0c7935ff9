"""Routing: the most specific template wins; 404 and 405 are the envelope's."""

from __future__ import annotations

import grpc
import pytest

from gateway.errors import GatewayError
from gateway.router import Router
from gateway.routes import Route


@pytest.fixture(scope="module")
def router(showcase_routes: list[Route]) -> Router:
    return Router(showcase_routes)


@pytest.mark.parametrize(
    ("method", "path", "rpc", "values"),
    [
        ("GET", "/v1/kitchens/special", "GetSpecialKitchen", {}),
        ("GET", "/v1/kitchens/k1", "GetKitchen", {"id": "k1"}),
        ("POST", "/v1/kitchens:purge", "PurgeKitchens", {}),
        ("POST", "/v1/kitchens/k1:polish", "PolishKitchen", {"id": "k1"}),
        ("GET", "/v1/kitchens:stream", "StreamKitchens", {}),
        ("GET", "/v1/shelves/kitchens", "GetKitchen", {"shelf": "shelves"}),
        ("GET", "/v1/rooms%2Fr1", "GetRoom", {"id": "rooms/r1"}),
    ],
)
def test_match(router: Router, method: str, path: str, rpc: str, values: dict[str, str]) -> None:
    found = router.match(method, path)

    assert found.route.binding.method.name == rpc
    assert dict(found.path_values) == values


def test_unknown_path_is_not_found(router: Router) -> None:
    with pytest.raises(GatewayError) as raised:
        router.match("GET", "/v2/kitchens")

    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.status == 404


def test_wrong_method_is_405_with_allow(router: Router) -> None:
    with pytest.raises(GatewayError) as raised:
        router.match("PUT", "/v1/kitchens/k1")

    assert raised.value.status == 405
    assert raised.value.headers == {"Allow": "DELETE, GET, PATCH"}


def test_duplicate_bindings_are_refused(showcase_routes: list[Route]) -> None:
    with pytest.raises(ValueError, match=r"both bind POST /v1/kitchens$"):
        Router([*showcase_routes, *showcase_routes])


def test_unbound_rpcs_are_not_routed(showcase_routes: list[Route]) -> None:
    names = {route.binding.method.name for route in showcase_routes}

    assert "Hidden" not in names
    assert "UpdateKitchen" in names
