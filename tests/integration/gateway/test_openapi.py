"""The OpenAPI document of the real ContextIQ services: snapshot, structure, and tool loading.

The snapshot is ``openapi_snapshot.json`` beside this file; after an intended change of the
protos or of the generator, regenerate it with ``UPDATE_SNAPSHOTS=1`` and review the diff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.server import GatewayServer
from gateway.settings import DEFAULT_SERVICES

SNAPSHOT = Path(__file__).with_name("openapi_snapshot.json")
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


@pytest.fixture(scope="module")
async def document() -> dict[str, Any]:
    """The live /openapi.json of a gateway for every default service (no upstream needed)."""
    app = create_app(
        routes_from=DEFAULT_SERVICES, upstreams=dict.fromkeys(DEFAULT_SERVICES, "127.0.0.1:1")
    )
    async with GatewayServer(app, port=0) as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served: dict[str, Any] = response.json()
    return served


def test_matches_the_snapshot(document: dict[str, Any]) -> None:
    rendered = json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(rendered, encoding="utf-8")
    assert SNAPSHOT.exists(), "no snapshot yet: run with UPDATE_SNAPSHOTS=1"
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert document == expected, (
        "the OpenAPI document changed; if intended, rerun with UPDATE_SNAPSHOTS=1 and commit "
        f"{SNAPSHOT.name}"
    )


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    for reference in _refs(document):
        assert reference.startswith("#/"), reference
        node: Any = document
        for part in reference[2:].split("/"):
            assert part in node, f"dangling {reference}"
            node = node[part]


def test_routes_and_operations_are_documented(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    operation_ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]
    assert len(operation_ids) == len(set(operation_ids))
    paths = document["paths"]
    assert set(paths["/api/v1/sessions"]) == {"get", "post"}
    # PATCH .../{memory.id} shares the path of GET/DELETE .../{id}: OpenAPI forbids twins.
    assert set(paths["/api/v1/memories/{id}"]) == {"get", "patch", "delete"}
    assert "/api/v1/memories/{memory_id}" not in paths
    assert "/api/v1/memories:purge" in paths
    assert "/v1/operations" in paths  # {name=operations} written out
    watch = paths["/api/v1/operations/{name}:watch"]["get"]
    assert watch["parameters"][0]["description"].endswith("`name` is `operations/{name}`.")
    assert set(paths["/v1/operations/{name}"]) == {"get", "delete"}
    assert "text/event-stream" in watch["responses"]["200"]["content"]
    assert not any("MemoryJobService" in op_id for op_id in operation_ids)
    for item in paths.values():
        for method, operation in item.items():
            if method in HTTP_METHODS and operation["operationId"] != "Gateway_Health":
                assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}


def test_is_a_valid_openapi_31_document(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_loads_in_schemathesis(document: dict[str, Any]) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(document)
    results = list(schema.get_all_operations())
    errors = [result.err() for result in results if not hasattr(result, "ok")]
    assert not errors, [(error.method, error.path, error.__cause__) for error in errors]
    assert len(results) == sum(
        1 for item in document["paths"].values() for method in item if method in HTTP_METHODS
    )


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)
