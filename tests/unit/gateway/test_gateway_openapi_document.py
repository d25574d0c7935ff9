"""The OpenAPI document generated for the showcase: every mapping rule, checked on one service."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import create_app
from gateway.bindings import BindingError, find_services
from tests.protos.showcase import SERVICE, Showcase

SCHEMAS = "#/components/schemas/"


@pytest.fixture(scope="module")
def document(showcase: Showcase) -> dict[str, Any]:
    app = create_app(
        routes_from=[SERVICE],
        upstreams={SERVICE: "upstream:1"},
        descriptor_sets=[showcase.descriptor_set],
    )
    openapi: dict[str, Any] = dict(app.state.gateway.openapi)
    return openapi


def _kitchen(document: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"]["contextiq.testing.v1.Kitchen"]
    return schema


def _parameters(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return {p["name"]: p for p in document["paths"][path][method].get("parameters", [])}


def test_scalar_and_well_known_types(document: dict[str, Any]) -> None:
    props = _kitchen(document)["properties"]

    assert props["f_int64"]["type"] == "string"
    assert props["f_int64"]["format"] == "int64"
    assert props["f_uint64"]["format"] == "uint64"
    assert props["f_int32"] == {
        "type": "integer",
        "format": "int32",
        "minimum": -(2**31),
        "maximum": 2**31 - 1,
    }
    assert props["f_double"] == {"type": "number", "format": "double"}
    assert props["f_bool"] == {"type": "boolean"}
    assert props["f_bytes"]["format"] == "byte"
    assert props["when"] == {"type": "string", "format": "date-time"}
    assert props["ttl"]["type"] == "string"
    assert props["mask"]["type"] == "string"
    assert props["attrs"] == {"type": "object", "additionalProperties": True}
    assert props["any_value"] == {"description": "Any JSON value."}
    assert props["maybe_int32"]["type"] == ["integer", "null"]
    assert props["maybe_int64"]["type"] == ["string", "null"]


def test_enums_messages_lists_and_maps(document: dict[str, Any]) -> None:
    props = _kitchen(document)["properties"]
    color = document["components"]["schemas"]["contextiq.testing.v1.Color"]

    assert props["color"] == {"$ref": SCHEMAS + "contextiq.testing.v1.Color"}
    assert color["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN"]
    assert "- `COLOR_RED`: Red." in color["description"]
    assert props["nested"] == {"$ref": SCHEMAS + "contextiq.testing.v1.Nested"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert props["nested_by_number"] == {
        "type": "object",
        "additionalProperties": {"$ref": SCHEMAS + "contextiq.testing.v1.Nested"},
        "propertyNames": {"pattern": "^-?[0-9]{1,9}$"},
    }


def test_field_behaviour_comments_and_oneofs(document: dict[str, Any]) -> None:
    kitchen = _kitchen(document)
    props = kitchen["properties"]

    assert kitchen["required"] == ["title"]
    assert props["server_note"]["readOnly"] is True
    assert props["secret"]["writeOnly"] is True
    assert props["id"]["description"] == "The id."
    assert kitchen["description"].startswith("Every kind of field.")
    assert kitchen["additionalProperties"] is False
    assert kitchen["allOf"] == [
        {
            "not": {
                "anyOf": [
                    {"required": ["choice_text", "choice_number"]},
                    {"required": ["choice_text", "choice_nested"]},
                    {"required": ["choice_number", "choice_nested"]},
                ]
            }
        }
    ]
    assert "opt_int32" not in str(kitchen["allOf"])  # proto3 optional is no oneof


def test_operations(document: dict[str, Any]) -> None:
    get = document["paths"]["/v1/kitchens/{id}"]["get"]

    assert get["operationId"] == "Showcase_GetKitchen"
    assert get["summary"] == "Echoes a kitchen built from the path and the query."
    assert get["tags"] == ["Showcase"]
    assert "requestBody" not in get
    assert document["paths"]["/v1/shelves/{shelf}/kitchens/{id}"]["get"]["operationId"] == (
        "Showcase_GetKitchen_1"
    )
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": SCHEMAS + "contextiq.testing.v1.Kitchen"
    }
    assert get["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    assert "Hidden" not in str(document["paths"])


def test_query_parameters_are_the_unbound_fields_flattened(document: dict[str, Any]) -> None:
    params = _parameters(document, "/v1/kitchens/{id}", "get")

    assert params["id"]["in"] == "path"
    assert params["id"]["required"] is True
    assert params["f_int64"]["in"] == "query"
    assert params["nested.name"]["in"] == "query"
    assert params["tags"]["schema"]["type"] == "array"
    assert params["tags"]["explode"] is True
    assert params["when"]["schema"]["format"] == "date-time"
    assert params["title"]["required"] is True
    for body_only in ("labels", "attrs", "any_value", "nesteds", "nested_by_number"):
        assert body_only not in params
    # A recursive message is flattened once: Nested.child is a Nested again.
    assert not any(name.startswith("nested.child") for name in params)


def test_request_bodies(document: dict[str, Any]) -> None:
    paths = document["paths"]
    schemas = document["components"]["schemas"]

    create = paths["/v1/kitchens"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": SCHEMAS + "contextiq.testing.v1.Kitchen"
    }
    assert create["requestBody"]["required"] is True
    assert "parameters" not in create

    polish = paths["/v1/kitchens/{id}:polish"]["post"]
    body_ref = polish["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "id" not in schemas[body_ref.removeprefix(SCHEMAS)]["properties"]

    add = paths["/v1/kitchens/{id}/nested"]["post"]
    assert add["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": SCHEMAS + "contextiq.testing.v1.Nested"
    }
    assert "title" in _parameters(document, "/v1/kitchens/{id}/nested", "post")

    patch = paths["/v1/kitchens/{id}"]["patch"]
    patch_ref = patch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert patch_ref == SCHEMAS + "contextiq.testing.v1.Kitchen.Patch"
    assert "required" not in schemas["contextiq.testing.v1.Kitchen.Patch"]
    assert "id" not in schemas["contextiq.testing.v1.Kitchen.Patch"]["properties"]
    assert _parameters(document, "/v1/kitchens/{id}", "patch")["id"]["description"].endswith(
        "Sets `kitchen.id`."
    )


def test_path_patterns_and_streams(document: dict[str, Any]) -> None:
    room = _parameters(document, "/v1/rooms/{id}", "get")["id"]
    assert room["schema"] == {"type": "string", "minLength": 1}
    assert room["description"] == "The id. `id` is `rooms/{id}`."
    assert "/v1/files/{id}" in document["paths"]
    assert "/v1/files/{id}:touch" in document["paths"]
    assert "/v1/shelves/kitchens" in document["paths"]

    stream = document["paths"]["/v1/kitchens:stream"]["get"]["responses"]["200"]
    assert set(stream["content"]) == {"text/event-stream", "application/x-ndjson"}

    tags = document["paths"]["/v1/kitchens/{id}/tags"]["get"]["responses"]["200"]
    assert tags["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"type": "string"},
    }


def test_unknown_service_is_refused() -> None:
    with pytest.raises(BindingError, match=r"unknown service 'no\.such\.Service'"):
        find_services(["no.such.Service"])
