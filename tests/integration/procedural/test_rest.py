"""The seeds' REST paths (/api/v1/procedural/...), through the gateway in front of the server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.server import GatewayServer
from tests.auth_helpers import bearer_headers
from tests.integration.memory.conftest import MemoryServer

SERVICE = "contextiq.procedural.v1.ProceduralService"


@pytest.fixture(scope="module")
async def http(procedural_server: MemoryServer) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(routes_from=[SERVICE], upstreams={SERVICE: procedural_server.address})
    server = GatewayServer(app, host="127.0.0.1", port=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            yield client
    finally:
        await server.stop()


async def test_procedural_over_rest(http: httpx.AsyncClient) -> None:
    headers = bearer_headers(f"rest-{uuid.uuid4().hex[:8]}")
    workflow = await http.post(
        "/api/v1/procedural/workflows",
        json={
            "name": "Onboard a customer",
            "description": "Create the account, send the welcome mail, schedule a call.",
            "scope": {"team": "success"},
            "steps": [{"action": "create account"}, {"action": "send welcome mail"}],
        },
        headers=headers,
    )
    assert workflow.status_code == 200, workflow.text
    workflow_id = workflow.json()["id"]
    used = await http.post(
        f"/api/v1/procedural/workflows/{workflow_id}:recordUsage", json={}, headers=headers
    )
    assert used.json()["usage_count"] == "1"
    skill = await http.post(
        "/api/v1/procedural/skills",
        json={
            "name": "Send the welcome mail",
            "skill_type": "tool_usage",
            "implementation": "mail.send(template='welcome', to=EMAIL)",
        },
        headers=headers,
    )
    assert skill.status_code == 200, skill.text
    skill_id = skill.json()["id"]
    outcome = await http.post(
        f"/api/v1/procedural/skills/{skill_id}:recordOutcome",
        json={"success": False, "notes": "bounced"},
        headers=headers,
    )
    assert outcome.status_code == 200, outcome.text
    assert outcome.json()["failure_count"] == "1"
    patched = await http.patch(
        f"/api/v1/procedural/skills/{skill_id}",
        json={"implementation": "mail.send(template='welcome-v2', to=EMAIL)"},
        headers=headers,
    )
    assert patched.json()["version"] == 2
    versions = await http.get(f"/api/v1/procedural/skills/{skill_id}/versions", headers=headers)
    assert [v["version"] for v in versions.json()["versions"]] == [2, 1]
    first = await http.get(f"/api/v1/procedural/skills/{skill_id}/versions/1", headers=headers)
    assert first.json()["failure_count"] == "1"
    trajectory = await http.post(
        "/api/v1/procedural/trajectories",
        json={
            "agent_id": "onboarder",
            "task_description": "Onboard ACME",
            "steps": [{"action": "create account", "observation": "created"}],
            "outcome": "success",
        },
        headers=headers,
    )
    assert trajectory.status_code == 200, trajectory.text
    listed = await http.get(
        "/api/v1/procedural/trajectories", params={"filter": 'outcome = "success"'}, headers=headers
    )
    assert [t["id"] for t in listed.json()["trajectories"]] == [trajectory.json()["id"]]
    found = await http.post(
        "/api/v1/procedural/search",
        json={"search_query": "welcome email", "kinds": ["skill", "workflow"], "top_k": 5},
        headers=headers,
    )
    assert found.status_code == 200, found.text
    kinds = {r["kind"] for r in found.json()["results"]}
    assert kinds == {"skill", "workflow"}
    assert found.json()["results"][0]["kind"] in {"skill", "workflow"}
    candidates = await http.get("/api/v1/procedural/candidates", headers=headers)
    assert candidates.status_code == 200
    assert candidates.json().get("candidates", []) == []
    bad = await http.post(
        "/api/v1/procedural/skills",
        json={"name": "x", "skill_type": "telepathy", "implementation": "x"},
        headers=headers,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "INVALID_ARGUMENT"
    assert "skill.skill_type" in bad.text
    no_steps = await http.post(
        "/api/v1/procedural/workflows", json={"name": "empty"}, headers=headers
    )
    assert no_steps.status_code == 400
    assert "workflow.steps" in no_steps.text
    deleted = await http.delete(f"/api/v1/procedural/workflows/{workflow_id}", headers=headers)
    assert deleted.status_code == 200
    missing = await http.get(f"/api/v1/procedural/workflows/{workflow_id}", headers=headers)
    assert missing.status_code == 404
