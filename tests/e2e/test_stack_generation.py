"""``make run`` runs memory generation end to end: the launcher's worker consumes the job
and calls the services on the launcher's own port with JWTs signed by the secret the launcher
generated (and keeps) in its data directory."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.stack_process import BOOTSTRAP_KEY, StackPorts, StackProcess

pytestmark = pytest.mark.timeout(300)

HEADERS = {"X-API-Key": BOOTSTRAP_KEY}


def _generate_and_wait(stack: StackProcess, fact: str) -> dict[str, Any]:
    with httpx.Client(base_url=stack.http_base, headers=HEADERS, timeout=30) as http:
        accepted = http.post(
            "/api/v1/memories/generate",
            json={
                "source_type": "facts",
                "scope": {"user_id": "e2e"},
                "facts": [{"fact": fact, "topic": "USER_PREFERENCES"}],
            },
        )
        assert accepted.status_code == 200, accepted.text
        name = accepted.json()["name"]
        deadline = time.monotonic() + 60
        while True:
            operation = http.get(f"/v1/{name}").json()
            if operation.get("done"):
                return dict(operation)
            assert time.monotonic() < deadline, f"{name} not done: {operation}\n{stack.output()}"
            time.sleep(0.1)


def test_generation_runs_in_the_embedded_stack(service_tmp_path: Path) -> None:
    data_dir = service_tmp_path / "stack-generation"
    data_dir.mkdir()
    stack = StackProcess(data_dir, StackPorts())
    stack.start()
    try:
        operation = _generate_and_wait(stack, "The user likes green tea.")
        assert "error" not in operation, operation
        assert operation["response"]["memories_created"] == 1
        secret = data_dir / "jwt_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        first_secret = secret.read_text()
        assert len(first_secret.strip()) >= 32
    finally:
        assert stack.stop() == 0, stack.output()

    again = StackProcess(data_dir, StackPorts())
    again.start()
    try:
        operation = _generate_and_wait(again, "The user likes black coffee.")
        assert "error" not in operation, operation
        assert (data_dir / "jwt_secret").read_text() == first_secret
        with httpx.Client(base_url=again.http_base, headers=HEADERS, timeout=30) as http:
            listed = http.get("/api/v1/memories").json()
        assert sorted(m["fact"] for m in listed["memories"]) == [
            "The user likes black coffee.",
            "The user likes green tea.",
        ]
    finally:
        assert again.stop() == 0, again.output()
