"""The transcoding table: HTTP requests in, the exact gRPC request the service received out.

Modelled on gapic-showcase's compliance suite: one parametrized test over a table of cases, each
naming the request (method, path with query, headers, body) and what must follow: the RPC
reached and its request (in proto text format, compared as messages), or the HTTP status and
error code, and where it matters the exact JSON answered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from google.protobuf import text_format

from tests.integration.gateway.showcase_servicer import ShowcaseBackend
from tests.protos.showcase import Showcase

_NO_BODY = object()


@dataclass(frozen=True)
class Case:
    """One row of the table.

    Attributes:
        id: Test id.
        method: HTTP method.
        path: Path and query string, as sent on the wire.
        body: JSON-serializable body, raw bytes, or nothing.
        headers: Extra request headers.
        status: Expected HTTP status.
        rpc: The RPC expected to receive the call.
        request: The request it must receive, in proto text format.
        response: The exact JSON body expected, when given.
        error: Expected error code name, for error rows.
        message: A substring the error message must contain.
        field: The field a google.rpc.BadRequest detail must name.
    """

    id: str
    method: str
    path: str
    body: Any = _NO_BODY
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    rpc: str | None = None
    request: str | None = None
    response: Any = None
    error: str | None = None
    message: str | None = None
    field: str | None = None


ALL_SCALARS_QUERY = (
    "f_double=1.5&f_float=2.5&f_int32=-3&f_int64=9007199254740993&f_uint32=4"
    "&f_uint64=18446744073709551615&f_sint32=-5&f_sint64=-6&f_fixed32=7&f_fixed64=8"
    "&f_sfixed32=-9&f_sfixed64=-10&f_bool=true&f_string=h%C3%A9&f_bytes=aGk%3D"
)
ALL_SCALARS_TEXT = (
    'id: "k1" f_double: 1.5 f_float: 2.5 f_int32: -3 f_int64: 9007199254740993 f_uint32: 4 '
    "f_uint64: 18446744073709551615 f_sint32: -5 f_sint64: -6 f_fixed32: 7 f_fixed64: 8 "
    'f_sfixed32: -9 f_sfixed64: -10 f_bool: true f_string: "h\\303\\251" f_bytes: "hi"'
)

CASES = [
    # --- path templates -----------------------------------------------------------------------
    Case("variable", "GET", "/v1/kitchens/k1", rpc="GetKitchen", request='id: "k1"'),
    Case(
        "literal-beats-variable", "GET", "/v1/kitchens/special", rpc="GetSpecialKitchen", request=""
    ),
    Case(
        "additional-binding",
        "GET",
        "/v1/shelves/s1/kitchens/k2",
        rpc="GetKitchen",
        request='id: "k2" shelf: "s1"',
    ),
    Case(
        "literal-only-variable",
        "GET",
        "/v1/shelves/kitchens",
        rpc="GetKitchen",
        request='shelf: "shelves"',
    ),
    Case(
        "nested-variables",
        "GET",
        "/v1/nested/abc/count/7",
        rpc="GetNested",
        request='nested { name: "abc" count: 7 }',
    ),
    Case(
        "nested-variable-bad-int",
        "GET",
        "/v1/nested/abc/count/seven",
        status=400,
        error="INVALID_ARGUMENT",
        field="nested.count",
    ),
    Case("single-segment-pattern", "GET", "/v1/rooms/r1", rpc="GetRoom", request='id: "rooms/r1"'),
    Case("pattern-other-prefix", "GET", "/v1/halls/r1", status=404, error="NOT_FOUND"),
    Case(
        "double-star",
        "GET",
        "/v1/files/a/b/c.txt",
        rpc="GetRoom",
        request='id: "files/a/b/c.txt"',
    ),
    Case(
        "double-star-with-verb",
        "POST",
        "/v1/files/a/b:touch",
        body={},
        rpc="TouchFile",
        request='id: "files/a/b"',
    ),
    Case(
        "verb-on-resource",
        "POST",
        "/v1/kitchens/k1:polish",
        body={"title": "shine"},
        rpc="PolishKitchen",
        request='id: "k1" title: "shine"',
    ),
    Case(
        "verb-on-collection",
        "POST",
        "/v1/kitchens:purge",
        body={"f_bool": True},
        rpc="PurgeKitchens",
        request="f_bool: true",
    ),
    Case(
        "additional-binding-put-verb",
        "PUT",
        "/v1/kitchens:echo",
        body={"title": "t"},
        rpc="CreateKitchen",
        request='title: "t"',
    ),
    Case(
        "percent-encoded-variable",
        "GET",
        "/v1/kitchens/a%20b%2Fc",
        rpc="GetKitchen",
        request='id: "a b/c"',
    ),
    Case("colon-in-variable", "GET", "/v1/kitchens/a:b", rpc="GetKitchen", request='id: "a:b"'),
    Case(
        "encoded-slash-in-pattern",
        "GET",
        "/v1/rooms%2Fr1",
        rpc="GetRoom",
        request='id: "rooms/r1"',
    ),
    Case("unknown-path", "GET", "/v1/nothing", status=404, error="NOT_FOUND"),
    Case("trailing-slash", "GET", "/v1/kitchens/k1/", status=404, error="NOT_FOUND"),
    Case(
        "wrong-method",
        "DELETE",
        "/v1/kitchens",
        status=405,
        error="UNIMPLEMENTED",
        message="allowed: POST",
    ),
    # --- query parameters ---------------------------------------------------------------------
    Case(
        "every-scalar-in-query",
        "GET",
        f"/v1/kitchens/k1?{ALL_SCALARS_QUERY}",
        rpc="GetKitchen",
        request=ALL_SCALARS_TEXT,
    ),
    Case(
        "camel-case-names",
        "GET",
        "/v1/kitchens/k1?fInt32=3&fString=x",
        rpc="GetKitchen",
        request='id: "k1" f_int32: 3 f_string: "x"',
    ),
    Case(
        "repeated",
        "GET",
        "/v1/kitchens/k1?tags=a&tags=b&numbers=1&numbers=-2",
        rpc="GetKitchen",
        request='id: "k1" tags: "a" tags: "b" numbers: 1 numbers: -2',
    ),
    Case(
        "enums-by-name-and-number",
        "GET",
        "/v1/kitchens/k1?color=COLOR_RED&colors=2&colors=COLOR_RED",
        rpc="GetKitchen",
        request='id: "k1" color: COLOR_RED colors: COLOR_GREEN colors: COLOR_RED',
    ),
    Case(
        "nested-fields",
        "GET",
        "/v1/kitchens/k1?nested.name=n&nested.count=2&nested.child.name=c",
        rpc="GetKitchen",
        request='id: "k1" nested { name: "n" count: 2 child { name: "c" } }',
    ),
    Case(
        "well-known-strings",
        "GET",
        "/v1/kitchens/k1?when=2025-01-02T03:04:05.5Z&ttl=3.5s&mask=fString,nested.name",
        rpc="GetKitchen",
        request=(
            'id: "k1" when { seconds: 1735787045 nanos: 500000000 } '
            'ttl { seconds: 3 nanos: 500000000 } mask { paths: "f_string" paths: "nested.name" }'
        ),
    ),
    Case(
        "wrappers-and-optional",
        "GET",
        "/v1/kitchens/k1?maybe_int32=5&maybe_int64=-7&maybe_bool=false&maybe_string=&opt_int32=0",
        rpc="GetKitchen",
        request=(
            'id: "k1" maybe_int32 { value: 5 } maybe_int64 { value: -7 } maybe_bool { } '
            "maybe_string { } opt_int32: 0"
        ),
    ),
    Case(
        "bool-spellings",
        "GET",
        "/v1/kitchens/k1?f_bool=1",
        rpc="GetKitchen",
        request='id: "k1" f_bool: true',
    ),
    Case(
        "bad-bool",
        "GET",
        "/v1/kitchens/k1?f_bool=yes",
        status=400,
        error="INVALID_ARGUMENT",
        field="f_bool",
    ),
    Case(
        "unknown-parameter",
        "GET",
        "/v1/kitchens/k1?nope=1",
        status=400,
        error="INVALID_ARGUMENT",
        message="unknown query parameter 'nope'",
        field="nope",
    ),
    Case(
        "bad-enum",
        "GET",
        "/v1/kitchens/k1?color=PURPLE",
        status=400,
        error="INVALID_ARGUMENT",
        field="color",
    ),
    Case(
        "int32-out-of-range",
        "GET",
        "/v1/kitchens/k1?f_int32=99999999999",
        status=400,
        error="INVALID_ARGUMENT",
        field="f_int32",
    ),
    Case(
        "non-repeated-twice",
        "GET",
        "/v1/kitchens/k1?f_string=a&f_string=b",
        status=400,
        error="INVALID_ARGUMENT",
        message="more than once",
    ),
    Case(
        "parameter-for-path-field",
        "GET",
        "/v1/kitchens/k1?id=k2",
        status=400,
        error="INVALID_ARGUMENT",
        message="the path sets id",
    ),
    Case(
        "map-in-query",
        "GET",
        "/v1/kitchens/k1?labels=x",
        status=400,
        error="INVALID_ARGUMENT",
        message="cannot be set from a query parameter",
    ),
    Case(
        "two-oneof-members",
        "GET",
        "/v1/kitchens/k1?choice_text=a&choice_number=1",
        status=400,
        error="INVALID_ARGUMENT",
        message="oneof",
    ),
    # --- bodies ---------------------------------------------------------------------------------
    Case(
        "body-every-kind",
        "POST",
        "/v1/kitchens",
        body={
            "id": "k1",
            "f_int64": 12,
            "f_uint64": "18446744073709551615",
            "f_double": "NaN",
            "f_bytes": "aGk=",
            "color": "COLOR_GREEN",
            "nested": {"name": "n", "child": {"count": 1}},
            "tags": ["a"],
            "nesteds": [{"name": "x"}, {}],
            "labels": {"k": "v"},
            "nested_by_number": {"3": {"name": "three"}},
            "when": "2025-01-02T03:04:05Z",
            "ttl": "1.000000001s",
            "mask": "fString,nested.name",
            "attrs": {"a": [1, "x", None, True]},
            "any_value": {"deep": {"er": 1}},
            "choice_nested": {"count": 5},
            "maybe_int64": "42",
            "maybe_bool": True,
            "opt_int32": 0,
        },
        rpc="CreateKitchen",
        request="""
            id: "k1" f_int64: 12 f_uint64: 18446744073709551615 f_double: nan f_bytes: "hi"
            color: COLOR_GREEN nested { name: "n" child { count: 1 } } tags: "a"
            nesteds { name: "x" } nesteds { } labels { key: "k" value: "v" }
            nested_by_number { key: 3 value { name: "three" } }
            when { seconds: 1735787045 } ttl { seconds: 1 nanos: 1 }
            mask { paths: "f_string" paths: "nested.name" }
            attrs { fields { key: "a" value { list_value {
              values { number_value: 1 } values { string_value: "x" }
              values { null_value: NULL_VALUE } values { bool_value: true } } } } }
            any_value { struct_value { fields { key: "deep" value { struct_value {
              fields { key: "er" value { number_value: 1 } } } } } } }
            choice_nested { count: 5 } maybe_int64 { value: 42 } maybe_bool { value: true }
            opt_int32: 0
        """,
    ),
    Case(
        "body-camel-case",
        "POST",
        "/v1/kitchens",
        body={"fInt32": 1, "nestedByNumber": {"1": {"name": "x"}}, "choiceText": "t"},
        rpc="CreateKitchen",
        request='f_int32: 1 nested_by_number { key: 1 value { name: "x" } } choice_text: "t"',
    ),
    Case(
        "body-unknown-field",
        "POST",
        "/v1/kitchens",
        body={"bogus": 1},
        status=400,
        error="INVALID_ARGUMENT",
        message="unknown field 'bogus'",
        field="bogus",
    ),
    Case(
        "body-unknown-nested-field",
        "POST",
        "/v1/kitchens",
        body={"nested": {"bogus": 1}},
        status=400,
        error="INVALID_ARGUMENT",
        field="nested.bogus",
    ),
    Case(
        "body-wrong-type",
        "POST",
        "/v1/kitchens",
        body={"f_int32": "three"},
        status=400,
        error="INVALID_ARGUMENT",
        field="f_int32",
    ),
    Case(
        "malformed-json",
        "POST",
        "/v1/kitchens",
        body=b'{"id": ',
        status=400,
        error="INVALID_ARGUMENT",
        message="malformed JSON",
    ),
    Case(
        "body-not-an-object",
        "POST",
        "/v1/kitchens",
        body=[1, 2],
        status=400,
        error="INVALID_ARGUMENT",
        message="must be a JSON object",
    ),
    Case(
        "wrong-content-type",
        "POST",
        "/v1/kitchens",
        body=b'{"id": "k1"}',
        headers={"Content-Type": "text/plain"},
        status=400,
        error="INVALID_ARGUMENT",
        message="Content-Type must be application/json",
    ),
    Case(
        "content-type-with-charset",
        "POST",
        "/v1/kitchens",
        body=b'{"id": "k1"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
        rpc="CreateKitchen",
        request='id: "k1"',
    ),
    Case(
        "body-on-get",
        "GET",
        "/v1/kitchens/k1",
        body={"id": "k1"},
        status=400,
        error="INVALID_ARGUMENT",
        message="takes no request body",
    ),
    Case(
        "body-on-delete",
        "DELETE",
        "/v1/kitchens/k1",
        body={"id": "k1"},
        status=400,
        error="INVALID_ARGUMENT",
        message="takes no request body",
    ),
    Case("empty-body", "POST", "/v1/kitchens", rpc="CreateKitchen", request=""),
    Case(
        "query-with-whole-body",
        "POST",
        "/v1/kitchens?title=x",
        body={},
        status=400,
        error="INVALID_ARGUMENT",
        message="the request body carries every field",
    ),
    Case(
        "path-and-body-agree",
        "POST",
        "/v1/kitchens/k1:polish",
        body={"id": "k1"},
        rpc="PolishKitchen",
        request='id: "k1"',
    ),
    Case(
        "path-and-body-disagree",
        "POST",
        "/v1/kitchens/k1:polish",
        body={"id": "k2"},
        status=400,
        error="INVALID_ARGUMENT",
        message="'k1' in the path but 'k2' in the body",
        field="id",
    ),
    # --- named body ---------------------------------------------------------------------------
    Case(
        "named-body-with-query",
        "POST",
        "/v1/kitchens/k1/nested?title=t&tags=a",
        body={"name": "n", "count": 3},
        rpc="AddNested",
        request='id: "k1" title: "t" tags: "a" nested { name: "n" count: 3 }',
    ),
    Case(
        "named-body-field-in-query",
        "POST",
        "/v1/kitchens/k1/nested?nested.name=x",
        body={},
        status=400,
        error="INVALID_ARGUMENT",
        message="the request body is nested",
    ),
    # --- PATCH and update masks ---------------------------------------------------------------
    Case(
        "patch-infers-mask",
        "PATCH",
        "/v1/kitchens/k1",
        body={"title": "t", "fInt32": 3},
        rpc="UpdateKitchen",
        request=(
            'kitchen { id: "k1" title: "t" f_int32: 3 } '
            'update_mask { paths: "title" paths: "f_int32" }'
        ),
    ),
    Case(
        "patch-explicit-mask",
        "PATCH",
        "/v1/kitchens/k1?update_mask=title&etag=e1",
        body={"title": "t", "f_int32": 3},
        rpc="UpdateKitchen",
        request=(
            'kitchen { id: "k1" title: "t" f_int32: 3 } update_mask { paths: "title" } etag: "e1"'
        ),
    ),
    Case(
        "patch-mask-json-names",
        "PATCH",
        "/v1/kitchens/k1?updateMask=fInt32,nested.childName,labels.someKey",
        body={},
        rpc="UpdateKitchen",
        request=(
            'kitchen { id: "k1" } update_mask { paths: "f_int32" paths: "nested.childName" '
            'paths: "labels.someKey" }'
        ),
    ),
    Case(
        "patch-path-body-conflict",
        "PATCH",
        "/v1/kitchens/k1",
        body={"id": "k2"},
        status=400,
        error="INVALID_ARGUMENT",
        field="kitchen.id",
    ),
    Case(
        "patch-whole-body-infers-mask",
        "PATCH",
        "/v1/flat/f1",
        body={"title": "t", "state": {"a": 1}},
        rpc="UpdateFlat",
        request=(
            'id: "f1" title: "t" state { fields { key: "a" value { number_value: 1 } } } '
            'update_mask { paths: "title" paths: "state" }'
        ),
    ),
    Case(
        "patch-whole-body-mask-into-struct",
        "PATCH",
        "/v1/flat/f1",
        body={"title": "t", "update_mask": "state.my_Key,title,nested.name"},
        rpc="UpdateFlat",
        request=(
            'id: "f1" title: "t" '
            'update_mask { paths: "state.my_Key" paths: "title" paths: "nested.name" }'
        ),
    ),
    Case(
        "patch-whole-body-path-field-not-in-mask",
        "PATCH",
        "/v1/flat/f1",
        body={"id": "f1", "nested": {"name": "n"}},
        rpc="UpdateFlat",
        request='id: "f1" nested { name: "n" } update_mask { paths: "nested" }',
    ),
    # --- responses ----------------------------------------------------------------------------
    Case(
        "response-json-mapping",
        "GET",
        "/v1/kitchens/k1?f_int64=5&color=1&when=2025-01-02T03:04:05Z&ttl=1.5s&maybe_int32=0",
        rpc="GetKitchen",
        response={
            "id": "k1",
            "f_int64": "5",
            "color": "COLOR_RED",
            "when": "2025-01-02T03:04:05Z",
            "ttl": "1.500s",
            "maybe_int32": 0,
            "server_note": "GetKitchen",
            "tags": [],
            "numbers": [],
            "colors": [],
            "nesteds": [],
            "labels": {},
            "nested_by_number": {},
        },
    ),
    Case(
        "response-empty-collections-nested",
        "POST",
        "/v1/kitchens",
        body={"nested": {"name": "n"}, "nesteds": [{}], "nested_by_number": {"1": {}}},
        rpc="CreateKitchen",
        response={
            "nested": {"name": "n"},
            "nesteds": [{}],
            "nested_by_number": {"1": {}},
            "server_note": "CreateKitchen",
            "tags": [],
            "numbers": [],
            "colors": [],
            "labels": {},
        },
    ),
    Case(
        "delete-returns-empty",
        "DELETE",
        "/v1/kitchens/k1",
        rpc="DeleteKitchen",
        request='id: "k1"',
        response={},
    ),
    Case(
        "response-body-field",
        "GET",
        "/v1/kitchens/k1/tags?tags=a&tags=b",
        rpc="GetKitchenTags",
        response=["a", "b"],
    ),
    Case(
        "response-body-empty-field",
        "GET",
        "/v1/kitchens/k1/tags",
        rpc="GetKitchenTags",
        response=[],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_transcoding(
    case: Case, client: httpx.AsyncClient, backend: ShowcaseBackend, showcase: Showcase
) -> None:
    backend.servicer.received.clear()
    headers = dict(case.headers)
    content: bytes | None = None
    if isinstance(case.body, bytes):
        content = case.body
        headers.setdefault("Content-Type", "application/json")
    elif case.body is not _NO_BODY:
        content = json.dumps(case.body).encode()
        headers.setdefault("Content-Type", "application/json")

    response = await client.request(case.method, case.path, content=content, headers=headers)

    assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    if case.error is not None:
        error = payload["error"]
        assert error["code"] == case.error
        assert error["trace_id"] == response.headers["x-trace-id"]
        if case.message is not None:
            assert case.message in error["message"]
        if case.field is not None:
            violations = [
                v["field"]
                for d in error["details"]
                if d["@type"].endswith("google.rpc.BadRequest")
                for v in d["field_violations"]
            ]
            assert violations == [case.field]
        assert not backend.servicer.received, "an invalid request must not reach the service"
        if case.status == 405:
            assert response.headers["allow"] == "POST"
        return
    name, received = backend.servicer.last()
    assert name == case.rpc
    if case.request is not None:
        expected = text_format.Parse(case.request, type(received)())
        assert received == expected, (
            f"received:\n{text_format.MessageToString(received)}\n"
            f"expected:\n{text_format.MessageToString(expected)}"
        )
    if case.response is not None:
        assert payload == case.response
