"""Server-streaming RPCs as Server-Sent Events and NDJSON."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.integration.gateway.showcase_servicer import ShowcaseBackend


def _events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        event: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            event[name] = value
        events.append(event)
    return events


async def test_messages_are_sse_events_with_ids(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/kitchens:stream", params={"count": 3})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.text.endswith("\n\n")
    events = _events(response.text)
    assert [e["id"] for e in events] == ["k0", "k1", "k2"]
    assert json.loads(events[2]["data"])["f_int32"] == 2
    assert json.loads(events[0]["data"])["tags"] == []


async def test_error_mid_stream_is_an_error_event(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/kitchens:stream", params={"count": 2, "fail_code": 5})

    assert response.status_code == 200
    events = _events(response.text)
    assert [e.get("id") for e in events] == ["k0", "k1", None]
    assert events[2]["event"] == "error"
    error = json.loads(events[2]["data"])["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["message"] == "the stream failed"
    assert error["trace_id"] == response.headers["x-trace-id"]


async def test_error_before_any_message_is_a_plain_error_response(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/kitchens:stream", params={"count": 0, "fail_code": 7})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "PERMISSION_DENIED"


async def test_empty_stream(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/kitchens:stream", params={"count": 0})

    assert response.status_code == 200
    assert response.text == ""


async def test_ndjson_on_request(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/kitchens:stream",
        params={"count": 2, "fail_code": 10},
        headers={"Accept": "application/x-ndjson"},
    )

    assert response.headers["content-type"] == "application/x-ndjson; charset=utf-8"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line.get("id") for line in lines[:2]] == ["k0", "k1"]
    assert lines[2]["error"]["code"] == "ABORTED"


async def test_client_disconnect_cancels_the_grpc_call(
    client: httpx.AsyncClient, backend: ShowcaseBackend
) -> None:
    backend.servicer.stream_cancelled.clear()

    async with client.stream(
        "GET", "/v1/kitchens:stream", params={"count": 1, "hang": "true"}
    ) as response:
        async for chunk in response.aiter_text():
            assert "k0" in chunk
            break
    # Leaving the block closes the half-read response, hence the connection.

    await asyncio.wait_for(backend.servicer.stream_cancelled.wait(), timeout=10)
