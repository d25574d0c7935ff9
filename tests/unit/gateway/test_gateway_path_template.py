"""Path templates: the http.proto grammar, matching, decoding, specificity, OpenAPI form."""

from __future__ import annotations

import pytest

from gateway.path_template import PathTemplate, TemplateSyntaxError


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/things", "/v1/things", {}),
        ("/v1/things/{id}", "/v1/things/a1", {"id": "a1"}),
        ("/v1/things/{id}", "/v1/things/a%20b%2Fc", {"id": "a b/c"}),
        ("/v1/things/{id}", "/v1/things/a:b", {"id": "a:b"}),
        ("/v1/{a.b.c}/x", "/v1/q/x", {"a.b.c": "q"}),
        ("/v1/{name=rooms/*}", "/v1/rooms/r1", {"name": "rooms/r1"}),
        ("/v1/{name=rooms/*/doors/*}", "/v1/rooms/r1/doors/d2", {"name": "rooms/r1/doors/d2"}),
        ("/v1/{name=files/**}", "/v1/files/a/b/c", {"name": "files/a/b/c"}),
        ("/v1/{name=files/**}", "/v1/files", {"name": "files"}),  # ** is zero or more
        ("/v1/{name=files/**}", "/v1/files/a%2Fb/c", {"name": "files/a%2Fb/c"}),
        ("/v1/{name=operations}", "/v1/operations", {"name": "operations"}),
        ("/v1/{name=files/**}:touch", "/v1/files/a/b:touch", {"name": "files/a/b"}),
        ("/v1/things/{id}:polish", "/v1/things/t1:polish", {"id": "t1"}),
        ("/v1/things:purge", "/v1/things:purge", {}),
        ("/v1/*/x/{id}", "/v1/any/x/7", {"id": "7"}),
    ],
)
def test_match(template: str, path: str, expected: dict[str, str]) -> None:
    assert PathTemplate.parse(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/things/{id}", "/v1/things"),
        ("/v1/things/{id}", "/v1/things/a/b"),
        ("/v1/things/{id}", "/v1/things/"),
        ("/v1/{name=rooms/*}", "/v1/halls/r1"),
        ("/v1/{name=rooms/*}", "/v1/rooms/r1/extra"),
        ("/v1/things:purge", "/v1/things"),
        ("/v1/things", "/v1/things:purge"),
        ("/v1/things/{id}:polish", "/v1/things/t1"),
    ],
)
def test_no_match(template: str, path: str) -> None:
    assert PathTemplate.parse(template).match(path) is None


@pytest.mark.parametrize(
    "template",
    ["v1/x", "/v1/{id", "/v1/{}", "/v1/{a}/{a}", "/v1/**/x", "/v1/{a={b}}", "/v1/x:", "/v1//x"],
)
def test_syntax_errors(template: str) -> None:
    with pytest.raises(TemplateSyntaxError, match="invalid path template"):
        PathTemplate.parse(template)


def test_literals_beat_variables_and_verbs_beat_none() -> None:
    templates = ["/v1/{a}/x", "/v1/y/{b}", "/v1/y/x", "/v1/{name=**}", "/v1/y/{b}:go"]
    ordered = sorted((PathTemplate.parse(t) for t in templates), key=lambda t: t.specificity)

    assert [t.source for t in ordered] == [
        "/v1/y/x",
        "/v1/y/{b}:go",
        "/v1/y/{b}",
        "/v1/{a}/x",
        "/v1/{name=**}",
    ]


@pytest.mark.parametrize(
    ("template", "openapi", "parameters"),
    [
        ("/v1/things/{id}", "/v1/things/{id}", [("id", "*")]),
        ("/v1/things/{thing.id}:go", "/v1/things/{thing_id}:go", [("thing_id", "*")]),
        ("/v1/{name=operations/**}:cancel", "/v1/operations/{name}:cancel", [("name", "**")]),
        ("/v1/{name=operations}", "/v1/operations", []),
        (
            "/v1/{name=projects/*/locations/*}",
            "/v1/projects/{name_1}/locations/{name_2}",
            [("name_1", "*"), ("name_2", "*")],
        ),
    ],
)
def test_openapi_path(template: str, openapi: str, parameters: list[tuple[str, str]]) -> None:
    path, found = PathTemplate.parse(template).openapi_path()

    assert path == openapi
    assert [(p.name, p.segment) for p in found] == parameters


def test_openapi_path_matches_its_own_template() -> None:
    template = PathTemplate.parse("/v1/{name=projects/*/locations/*}")

    assert template.match("/v1/projects/p1/locations/l2") == {"name": "projects/p1/locations/l2"}
