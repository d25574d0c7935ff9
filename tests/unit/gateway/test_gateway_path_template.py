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
    ("template", "openapi"),
    [
        ("/v1/things/{id}", "/v1/things/{id}"),
        ("/v1/things/{thing.id}:go", "/v1/things/{thing_id}:go"),
        ("/v1/{name=operations/**}:cancel", "/v1/{name}:cancel"),
        ("/v1/{name=operations}", "/v1/operations"),
    ],
)
def test_openapi_path(template: str, openapi: str) -> None:
    assert PathTemplate.parse(template).openapi_path() == openapi


def test_variable_value_regex() -> None:
    (variable,) = PathTemplate.parse("/api/v1/{name=operations/*}:watch").variables

    assert variable.value_regex() == "operations/[^/]+"
    assert variable.multi_segment
