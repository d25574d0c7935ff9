"""The seeds' REST paths, through the gateway, against the real SessionService."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.server import GatewayServer
from sessions_svc.component import SERVICE_NAME
from tests.auth_helpers import bearer_headers
from tests.integration.sessions.conftest import SessionsServer


@pytest.fixture(scope="module")
async def http(sessions: SessionsServer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(routes_from=[SERVICE_NAME], upstreams={SERVICE_NAME: sessions.address})
    server = GatewayServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            yield client
    finally:
        await server.stop()


async def test_session_lifecycle_over_rest(http: httpx.AsyncClient, tenant: str) -> None:
    headers = bearer_headers(tenant)
    created = await http.post(
        "/api/v1/sessions",
        json={
            "user_id": "u1",
            "agent_id": "coordinator",
            "app_name": "travel",
            "scope": {"user_id": "u1", "project": "alpha"},
            "state": {"step": 1},
            "ttl": "3600s",
        },
        headers=headers,
    )
    assert created.status_code == 200, created.text
    session = created.json()
    sid = session["id"]
    assert session["scope"] == {"user_id": "u1", "project": "alpha"}
    assert "expires_at" in session

    event = await http.post(
        f"/api/v1/sessions/{sid}/events",
        json={
            "author": "user",
            "content": {"role": "user", "parts": [{"text": "Book me a flight"}]},
            "actions": {"state_delta": {"user:home": "Paris", "step": 2}},
        },
        headers=headers,
    )
    assert event.status_code == 200, event.text
    assert event.json()["sequence"] == "1"  # int64 is a string in proto3 JSON

    patched = await http.patch(
        f"/api/v1/sessions/{sid}/state",
        json={"state": {"step": 3}, "update_mask": "state.step", "etag": session["etag"]},
        headers=headers,
    )
    assert patched.status_code == 409  # the append moved the etag: ABORTED
    current = (await http.get(f"/api/v1/sessions/{sid}", headers=headers)).json()
    patched = await http.patch(
        f"/api/v1/sessions/{sid}/state",
        json={"state": {"step": 3}, "update_mask": "state.step", "etag": current["etag"]},
        headers=headers,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["state"] == {"step": 3, "user:home": "Paris"}

    got = await http.get(
        f"/api/v1/sessions/{sid}", params={"num_recent_events": 1}, headers=headers
    )
    assert [e["content"]["parts"][0]["text"] for e in got.json()["events"]] == ["Book me a flight"]
    listed = await http.get("/api/v1/sessions", params={"user_id": "u1"}, headers=headers)
    assert [s["id"] for s in listed.json()["sessions"]] == [sid]
    events = await http.get(
        f"/api/v1/sessions/{sid}/events", params={"filter": "author = user"}, headers=headers
    )
    assert len(events.json()["events"]) == 1

    deleted = await http.delete(f"/api/v1/sessions/{sid}", headers=headers)
    assert deleted.status_code == 200
    assert deleted.json()["deleted_event_count"] == "1"
    missing = await http.get(f"/api/v1/sessions/{sid}", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"


async def test_bad_input_over_rest_names_the_field(http: httpx.AsyncClient, tenant: str) -> None:
    headers = bearer_headers(tenant)
    sid = (await http.post("/api/v1/sessions", json={"user_id": "u1"}, headers=headers)).json()[
        "id"
    ]
    response = await http.post(
        f"/api/v1/sessions/{sid}/events", json={"author": "robot"}, headers=headers
    )
    assert response.status_code == 400
    assert "event.author" in response.text
    scope = await http.post(
        "/api/v1/sessions",
        json={"user_id": "u1", "scope": {f"k{i}": "v" for i in range(6)}},
        headers=headers,
    )
    assert scope.status_code == 400
    assert "scope" in scope.text
