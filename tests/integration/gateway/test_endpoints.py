"""The gateway's own endpoints (/health, /metrics, /docs) and its server life cycle."""

from __future__ import annotations

import re

import httpx
import pytest
from grpc_health.v1 import health_pb2

from gateway.app import create_app
from gateway.server import GatewayServer, GatewayStartError, serve
from tests.integration.gateway.conftest import EXTRA_COMPONENTS
from tests.integration.gateway.showcase_servicer import ShowcaseBackend
from tests.protos.showcase import SERVICE


async def test_health_reports_every_component(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "status": "SERVING",
        "components": {SERVICE: "SERVING", "nats": "SERVING", "postgres": "SERVING"},
    }


async def test_health_is_503_when_a_component_does_not_serve(
    client: httpx.AsyncClient, backend: ShowcaseBackend
) -> None:
    await backend.health.set("nats", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        response = await client.get("/health")
    finally:
        await backend.health.set("nats", health_pb2.HealthCheckResponse.SERVING)

    assert response.status_code == 503
    assert response.json()["status"] == "NOT_SERVING"
    assert response.json()["components"]["nats"] == "NOT_SERVING"


async def test_health_of_unknown_and_unreachable_components(backend: ShowcaseBackend) -> None:
    app = create_app(
        routes_from=[SERVICE],
        upstreams={SERVICE: backend.address},
        health_names={"qdrant": backend.address, "elsewhere": "127.0.0.1:1"},
    )
    async with GatewayServer(app, port=0) as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/health")

    assert response.status_code == 503
    components = response.json()["components"]
    assert components[SERVICE] == "SERVING"
    assert components["qdrant"] == "SERVICE_UNKNOWN"
    assert components["elsewhere"] == "UNAVAILABLE"
    assert set(EXTRA_COMPONENTS).isdisjoint(components)


async def test_builtin_endpoint_wrong_method_is_405_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post("/health")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "UNIMPLEMENTED"


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/v1/kitchens/metrics-probe")
    await client.get("/v1/no-such-route")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(
        r'contextiq_gateway_requests_total\{method="GET",route="/v1/kitchens/\{id\}",'
        r'status="200"\} [1-9]',
        text,
    )
    assert 'route="(unmatched)",status="404"' in text
    assert 'contextiq_gateway_request_duration_seconds_bucket{le="0.001",method="GET"' in text


async def test_docs_page_is_self_contained(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "openapi.json" in response.text
    assert not re.search(r"""(src|href)=["']?https?://""", response.text), "no CDN offline"


async def test_port_in_use_is_a_one_line_error(
    gateway: GatewayServer, backend: ShowcaseBackend
) -> None:
    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: backend.address})

    with pytest.raises(GatewayStartError) as raised:
        await serve(app, host="127.0.0.1", port=gateway.port)

    message = str(raised.value)
    assert message == f"cannot listen on 127.0.0.1:{gateway.port}: the port is already in use"


async def test_serve_and_stop(backend: ShowcaseBackend) -> None:
    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: backend.address})
    server = await serve(app, host="127.0.0.1", port=0)
    url = server.url
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/v1/kitchens/k1")).status_code == 200

    await server.stop()

    async with httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/v1/kitchens/k1")
