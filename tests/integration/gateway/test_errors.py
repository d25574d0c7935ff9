"""Errors through the gateway: every gRPC code, details, Retry-After, and gateway-made errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.errors import GatewayError
from gateway.hooks import HookContext
from gateway.metrics import GatewayMetrics
from gateway.middleware import RequestMiddleware
from gateway.server import GatewayServer
from tests.integration.gateway.showcase_servicer import ShowcaseBackend
from tests.protos.showcase import SERVICE

# grpc-gateway's HTTPStatusFromCode, written out independently of gateway.errors.
EXPECTED_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=[c.name for c in grpc.StatusCode])
async def test_every_grpc_code_maps_to_its_http_status_and_envelope(
    code: grpc.StatusCode, client: httpx.AsyncClient
) -> None:
    response = await client.post("/v1/fail", json={"code": code.value[0], "message": "boom"})

    assert response.status_code == EXPECTED_STATUS[code.name]
    if code == grpc.StatusCode.OK:
        assert response.json() == {}
        return
    assert response.json() == {
        "error": {
            "code": code.name,
            "message": "boom",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "SHOWCASE_FAILURE",
                    "domain": "testing.contextiq.dev",
                    "metadata": {"code": code.name},
                }
            ],
            "trace_id": response.headers["x-trace-id"],
        }
    }
    assert "retry-after" not in response.headers


async def test_resource_exhausted_with_retry_info_sets_retry_after(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/fail", json={"code": 8, "message": "slow down", "retry_delay": "2.2s"}
    )

    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    types = [detail["@type"] for detail in response.json()["error"]["details"]]
    assert types == [
        "type.googleapis.com/google.rpc.ErrorInfo",
        "type.googleapis.com/google.rpc.RetryInfo",
    ]
    assert response.json()["error"]["details"][1]["retry_delay"] == "2.200s"


async def test_trace_id_is_32_hex_and_matches_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing")

    assert response.status_code == 404
    trace_id = response.json()["error"]["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert response.headers["x-trace-id"] == trace_id


async def test_unreachable_upstream_is_503_unavailable(backend: ShowcaseBackend) -> None:
    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: "127.0.0.1:1"})
    async with (
        GatewayServer(app, port=0) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        response = await http.get("/v1/kitchens/k1", headers={"X-Request-Timeout": "5"})

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UNAVAILABLE"


async def _explode(context: HookContext) -> None:
    raise RuntimeError("secret internals")


async def _rate_limit(context: HookContext) -> None:
    if context.route.binding.method.name == "CreateKitchen":
        raise GatewayError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited", headers={"Retry-After": "7"}
        )


@pytest.fixture
async def hooked_client(backend: ShowcaseBackend) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose hooks rate-limit CreateKitchen and crash on GetSpecialKitchen."""

    async def hook(context: HookContext) -> None:
        await _rate_limit(context)
        if context.route.binding.method.name == "GetSpecialKitchen":
            await _explode(context)

    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: backend.address}, hooks=[hook])
    async with (
        GatewayServer(app, port=0) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        yield http


async def test_unexpected_exception_is_a_generic_500_envelope(
    hooked_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await hooked_client.get("/v1/kitchens/special")

    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "INTERNAL"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert any("secret internals" in str(r.exc_info) for r in caplog.records if r.exc_info)


async def test_a_hook_can_reject_a_request(
    hooked_client: httpx.AsyncClient, backend: ShowcaseBackend
) -> None:
    backend.servicer.received.clear()

    response = await hooked_client.post("/v1/kitchens", json={})

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert not backend.servicer.received


async def test_oversized_body_is_413(client: httpx.AsyncClient, backend: ShowcaseBackend) -> None:
    backend.servicer.received.clear()
    big = b'{"f_string": "' + b"x" * (4 * 1024 * 1024) + b'"}'

    response = await client.post(
        "/v1/kitchens", content=big, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert not backend.servicer.received


async def test_exception_escaping_the_app_is_a_500_envelope_with_the_trace_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The outer layer's last resort: whatever escapes what it wraps (the transcoder catches its
    # own) is logged and answered with the envelope, counted as a 500, the connection kept.
    async def exploding(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raise RuntimeError("secret internals")

    metrics = GatewayMetrics()
    async with (
        GatewayServer(RequestMiddleware(exploding, metrics=metrics), port=0) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        first = await http.get("/v1/anything")
        second = await http.get("/v1/anything")

    for response in (first, second):
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "INTERNAL"
        assert "secret" not in response.text
        assert response.headers["x-trace-id"] == error["trace_id"]
    assert first.json()["error"]["trace_id"] != second.json()["error"]["trace_id"]
    assert any("secret internals" in str(r.exc_info) for r in caplog.records if r.exc_info)
    rendered = metrics.render().decode()
    assert re.search(
        r'contextiq_gateway_requests_total\{method="GET",route="\(unmatched\)",status="500"\} 2',
        rendered,
    )
