"""What crosses the gateway besides the message: credentials, trace context, metadata, deadlines."""

from __future__ import annotations

import base64
import re

import httpx
import pytest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_credentials_trace_context_and_custom_metadata_arrive(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/v1/inspect",
        headers={
            "Authorization": "Bearer t0ken",
            "X-API-Key": "k3y",
            "traceparent": TRACEPARENT,
            "tracestate": "vendor=1",
            "X-Request-Id": "req-1",
            "Grpc-Metadata-Tenant": "acme",
            "Grpc-Metadata-Blob-Bin": base64.b64encode(b"\x00\x01").decode(),
            "Cookie": "not=forwarded",
        },
    )

    assert response.status_code == 200
    metadata = response.json()["metadata"]
    assert metadata["authorization"] == "Bearer t0ken"
    assert metadata["x-api-key"] == "k3y"
    # The client's trace continues upstream: same trace id and sampling decision; the parent is
    # the gateway's own request span once a tracer provider is installed, else the client's.
    version, trace_id, parent, flags = metadata["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert re.fullmatch(r"[0-9a-f]{16}", parent)
    assert metadata["tracestate"] == "vendor=1"
    assert metadata["x-request-id"] == "req-1"
    assert metadata["tenant"] == "acme"
    assert "cookie" not in metadata
    assert response.json()["binary_metadata"]["blob-bin"] == base64.b64encode(b"\x00\x01").decode()
    assert response.headers["x-trace-id"] == TRACE_ID


async def test_a_fresh_trace_is_forwarded_when_the_client_sends_none(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/inspect")

    trace_id = response.headers["x-trace-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    traceparent = response.json()["metadata"]["traceparent"]
    assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-[0-9a-f]{{2}}", traceparent)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"X-Request-Timeout": "5"}, 3.0, 5.0),
        ({"X-Request-Timeout": "0.75"}, 0.1, 0.75),
        ({"grpc-timeout": "2S"}, 1.0, 2.0),
        ({"grpc-timeout": "1500m", "X-Request-Timeout": "9"}, 0.5, 1.5),
        ({}, 25.0, 30.0),
    ],
    ids=["x-request-timeout", "fractional", "grpc-timeout", "grpc-timeout-wins", "default-30s"],
)
async def test_deadline_is_forwarded(
    client: httpx.AsyncClient, headers: dict[str, str], low: float, high: float
) -> None:
    response = await client.get("/v1/inspect", headers=headers)

    remaining = response.json()["time_remaining"]
    # gRPC rounds the deadline it puts on the wire up to its timer granularity.
    assert low < remaining <= high * 1.01


@pytest.mark.parametrize(
    "headers",
    [{"X-Request-Timeout": "soon"}, {"X-Request-Timeout": "-1"}, {"grpc-timeout": "5 seconds"}],
    ids=["not-a-number", "negative", "bad-grpc-timeout"],
)
async def test_malformed_deadline_is_400(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.get("/v1/inspect", headers=headers)

    assert response.status_code == 400
    assert "timeout" in response.json()["error"]["message"].lower()


async def test_response_metadata_comes_back_as_headers(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/inspect", params=[("echo_initial", "x-initial=1"), ("echo_trailing", "x-trailing=2")]
    )

    assert response.status_code == 200
    assert response.headers["grpc-metadata-x-initial"] == "1"
    assert response.headers["grpc-metadata-x-trailing"] == "2"
