"""The seeds' REST paths, through the gateway in front of the memory server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.server import GatewayServer
from tests.auth_helpers import bearer_headers
from tests.integration.memory.conftest import MemoryServer

SERVICES = ("contextiq.memory.v1.MemoryService", "contextiq.memory.v1.MemoryBankService")


@pytest.fixture(scope="module")
async def http(memory_server: MemoryServer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        routes_from=list(SERVICES), upstreams=dict.fromkeys(SERVICES, memory_server.address)
    )
    server = GatewayServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            yield client
    finally:
        await server.stop()


async def test_memories_over_rest(http: httpx.AsyncClient) -> None:
    headers = bearer_headers(f"rest-{uuid.uuid4().hex[:8]}")
    created = await http.post(
        "/api/v1/memories",
        json={
            "scope": {"user_id": "123"},
            "fact": "The user edits code in Neovim.",
            "topic": "USER_PREFERENCES",
        },
        headers=headers,
    )
    assert created.status_code == 200, created.text
    memory = created.json()
    found = await http.post(
        "/api/v1/memories/search",
        json={"scope": {"user_id": "123"}, "search_query": "editor", "top_k": 5},
        headers=headers,
    )
    assert found.status_code == 200, found.text
    results = found.json()["results"]
    assert results[0]["memory"]["id"] == memory["id"]
    assert "dense" in results[0]["matched_signals"]
    patched = await http.patch(
        f"/api/v1/memories/{memory['id']}",
        json={"fact": "The user edits code in Helix."},
        headers=headers,
    )
    assert patched.status_code == 200, patched.text
    revisions = await http.get(f"/api/v1/memories/{memory['id']}/revisions", headers=headers)
    assert [r["action"] for r in revisions.json()["revisions"]] == ["UPDATED", "CREATED"]
    bad = await http.post(
        "/api/v1/memories/search",
        json={"scope": {"user_id": "123"}, "search_query": "editor", "top_k": 500},
        headers=headers,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_ARGUMENT"
    bank = await http.get("/api/v1/memory-banks/default", headers=headers)
    assert bank.json()["id"] == "default"


async def test_batch_create_over_rest(http: httpx.AsyncClient) -> None:
    headers = bearer_headers(f"rest-{uuid.uuid4().hex[:8]}")
    created = await http.post(
        "/api/v1/memories:batchCreate",
        json={
            "requests": [
                {"scope": {"user_id": "7"}, "fact": "The user grows tomatoes."},
                {"scope": {"user_id": "7"}, "fact": "The user bikes to work.", "request_id": "b"},
            ]
        },
        headers=headers,
    )
    assert created.status_code == 200, created.text
    assert [m["fact"] for m in created.json()["memories"]] == [
        "The user grows tomatoes.",
        "The user bikes to work.",
    ]
    bad = await http.post(
        "/api/v1/memories:batchCreate",
        json={"requests": [{"scope": {"user_id": "7"}, "fact": "ok"}, {"scope": {}, "fact": ""}]},
        headers=headers,
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert "requests[1]" in bad.text
    listed = await http.get("/api/v1/memories", headers=headers)
    assert len(listed.json()["memories"]) == 2
