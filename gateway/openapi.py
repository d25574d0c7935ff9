"""The OpenAPI 3.1 document, generated from the same bindings the gateway serves.

Paths come from the templates (``{name=operations/*}`` becomes ``{name}`` with a pattern;
literal-only variables are written out), path parameters from the variables, query parameters
from the request fields bound neither by the path nor by the body (nested messages flattened to
``a.b``, as grpc-gateway does), the request body from the body field, and every error response
from the one envelope.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.comments import SourceComments
from gateway.errors import HTTP_STATUS_BY_CODE
from gateway.fields import accepts_string, plain_message
from gateway.openapi_schemas import Schema, SchemaBuilder, is_required, ref
from gateway.path_template import PathParameter
from gateway.routes import Route

_log = logging.getLogger(__name__)

OPENAPI_VERSION: Final = "3.1.0"
ERROR_RESPONSE: Final = "Error"
ERROR_SCHEMA: Final = "gateway.ErrorEnvelope"
HEALTH_SCHEMA: Final = "gateway.HealthReport"
TRACE_HEADER: Final = "X-Trace-Id"
_TEMPLATE_NAME: Final = re.compile(r"\{([^}]+)\}")
# Query parameters are flattened at most this deep (recursive messages would never end).
_MAX_QUERY_DEPTH: Final = 4

_DESCRIPTION: Final = """\
HTTP/JSON access to the ContextIQ gRPC services, transcoded by the REST gateway.

JSON uses proto field names (`user_id`) and also accepts lowerCamelCase on input; 64-bit
integers are strings; enums are value names; times are RFC 3339. Unset scalar fields are left
out of responses, lists and maps are always present.

A PATCH without `update_mask` changes the fields present in the request body (their top-level
keys), as grpc-gateway does.

Credentials (`Authorization`, `X-API-Key`) are forwarded to the services, which enforce them.
The deadline of a call is `X-Request-Timeout` (seconds) or `grpc-timeout`, {timeout} by
default; streams have none unless one is given.
`Grpc-Metadata-<name>` headers become gRPC metadata, and response metadata comes back as
`Grpc-Metadata-<name>` headers. Every error is the same envelope, with the gRPC code name,
and every response carries `X-Trace-Id`.
"""


def build_document(
    routes: Sequence[Route],
    *,
    comments: SourceComments,
    title: str = "ContextIQ REST API",
    version: str = "v1",
    health_path: str | None = "/health",
    request_timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Builds the OpenAPI 3.1 document of the routes.

    Args:
        routes: The served routes.
        comments: Proto comments for the descriptions.
        title: ``info.title``.
        version: ``info.version``.
        health_path: Where the health endpoint is documented; None leaves it out.
        request_timeout_s: The default deadline, for the description.
    """
    schemas = SchemaBuilder(comments)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, str] = {}
    hierarchies: dict[str, str] = {}
    ordered = sorted(
        routes, key=lambda r: (r.binding.service.full_name, r.binding.method.index, r.binding.index)
    )
    for route in ordered:
        binding = route.binding
        tags.setdefault(binding.service.name, comments.get(binding.service.full_name))
        template_path, path_parameters = binding.template.openapi_path()
        path, renames = _canonical_path(template_path, hierarchies)
        operations = paths.setdefault(path, {})
        method = binding.http_method.lower()
        if method in operations:
            _log.warning(
                "OpenAPI: %s %s is documented once; %s is left out",
                binding.http_method,
                path,
                binding.method.full_name,
            )
            continue
        operations[method] = _operation(
            route, schemas, comments, _path_parameters(route, path_parameters, schemas, renames)
        )
    if health_path is not None:
        paths[health_path] = {"get": _health_operation()}
    components: dict[str, Any] = {
        "schemas": {**dict(sorted(schemas.components.items())), **_gateway_schemas()},
        "responses": {ERROR_RESPONSE: _error_response()},
        "headers": {
            TRACE_HEADER: {
                "description": "The request's trace id (also `trace_id` in error envelopes).",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            }
        },
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer"},
            "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": _DESCRIPTION.format(timeout=f"{request_timeout_s:g} s"),
        },
        "tags": [
            {"name": name, "description": text} if text else {"name": name}
            for name, text in tags.items()
        ],
        "security": [{"bearerAuth": []}, {"apiKeyAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": components,
    }


def _canonical_path(path: str, hierarchies: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Merges paths that differ only in parameter names (``/m/{id}`` and ``/m/{memory_id}``).

    OpenAPI forbids such twins; the first one seen is kept and the later ones' parameters are
    renamed after it (their descriptions say which field they set).

    Returns:
        The path to document under, and the renaming of this path's parameters.
    """
    hierarchy = _TEMPLATE_NAME.sub("{}", path)
    canonical = hierarchies.setdefault(hierarchy, path)
    names = _TEMPLATE_NAME.findall(path)
    return canonical, dict(zip(names, _TEMPLATE_NAME.findall(canonical), strict=True))


def _operation(
    route: Route,
    schemas: SchemaBuilder,
    comments: SourceComments,
    path_parameters: list[dict[str, Any]],
) -> dict[str, Any]:
    binding = route.binding
    method = binding.method
    text = comments.get(method.full_name)
    operation: dict[str, Any] = {
        "operationId": binding.operation_id,
        "tags": [binding.service.name],
    }
    if text:
        operation["summary"] = _first_sentence(text)
        operation["description"] = text
    parameters = [*path_parameters, *_query_parameters(route, schemas)]
    if parameters:
        operation["parameters"] = parameters
    body = _request_body(route, schemas)
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {
        "200": _success_response(route, schemas),
        "default": {"$ref": f"#/components/responses/{ERROR_RESPONSE}"},
    }
    return operation


def _path_parameters(
    route: Route,
    parameters: list[PathParameter],
    schemas: SchemaBuilder,
    renames: dict[str, str],
) -> list[dict[str, Any]]:
    leaves = {path_field.variable.name: path_field.chain[-1] for path_field in route.path_fields}
    comments = schemas.comments
    documented: list[dict[str, Any]] = []
    for parameter in parameters:
        variable = parameter.variable
        leaf = leaves[variable.name]
        name = renames.get(parameter.name, parameter.name)
        notes = [comments.get(leaf.full_name)]
        if not variable.whole:
            shown = variable.openapi_parts()[0]
            notes.append(f"`{variable.name}` is `{'/'.join(shown)}`.")
        elif name != variable.name:
            notes.append(f"Sets `{variable.name}`.")
        schema = _parameter_schema(parameter, leaf, schemas)
        documented.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": schema,
                **({"description": text} if (text := " ".join(n for n in notes if n)) else {}),
            }
        )
    return documented


def _parameter_schema(
    parameter: PathParameter, leaf: FieldDescriptor, schemas: SchemaBuilder
) -> Schema:
    schema: Schema = {"type": "string"}
    if parameter.variable.whole:
        schema = schemas.scalar(leaf)
    if schema.get("type") == "string" and "pattern" not in schema and "format" not in schema:
        schema["minLength"] = 1
    return schema


def _query_parameters(route: Route, schemas: SchemaBuilder) -> list[dict[str, Any]]:
    binding = route.binding
    if binding.body == "*":
        return []
    excluded = set(route.path_roots)
    if route.body_field is not None:
        excluded.add(route.body_field.name)
    parameters: list[dict[str, Any]] = []
    request = binding.method.input_type
    for field in request.fields:
        if field.name not in excluded:
            parameters.extend(
                _flatten(
                    field, prefix="", schemas=schemas, seen=(request.full_name,), required=True
                )
            )
    return parameters


def _flatten(
    field: FieldDescriptor,
    *,
    prefix: str,
    schemas: SchemaBuilder,
    seen: tuple[str, ...],
    required: bool,
) -> Iterable[dict[str, Any]]:
    name = prefix + field.name
    sub = plain_message(field)
    if sub is not None:
        if field.is_repeated or sub.full_name in seen or len(seen) > _MAX_QUERY_DEPTH:
            return
        for child in sub.fields:
            yield from _flatten(
                child,
                prefix=name + ".",
                schemas=schemas,
                seen=(*seen, sub.full_name),
                required=False,
            )
        return
    if not accepts_string(field):
        return  # maps, Struct, Value, Any: body only
    schema = schemas.field(field)
    description = schema.pop("description", None)
    parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if field.is_repeated:
        parameter["style"] = "form"
        parameter["explode"] = True
    if required and is_required(field):
        parameter["required"] = True
    if description:
        parameter["description"] = description
    yield parameter


def _request_body(route: Route, schemas: SchemaBuilder) -> dict[str, Any] | None:
    binding = route.binding
    request = binding.method.input_type
    if not binding.body:
        return None
    if binding.body == "*":
        excluded = set(route.path_roots)
        if excluded:
            schema = schemas.variant(
                request,
                name=f"{binding.service.full_name}.{binding.method.name}Body",
                without=excluded,
            )
        else:
            schema = schemas.message(request)
        required = any(is_required(f) for f in request.fields if f.name not in excluded)
    else:
        body_field = route.body_field
        assert body_field is not None
        resource = plain_message(body_field)
        if route.mask_field is not None and resource is not None:
            # The resource's id comes from the path ({memory.id}); it is left out of the body.
            in_path = {
                path_field.chain[1].name
                for path_field in route.path_fields
                if len(path_field.chain) == 2 and path_field.chain[0] == body_field
            }
            schema = schemas.variant(
                resource,
                name=f"{resource.full_name}.Patch",
                without=in_path,
                drop_required=True,
                description=(
                    f"{resource.name} fields to change; with no `update_mask` the "
                    "fields present here are the ones changed."
                ),
            )
        else:
            schema = schemas.field(body_field, documented=False)
        required = is_required(body_field)
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _success_response(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    binding = route.binding
    response: Descriptor = binding.method.output_type
    headers = {TRACE_HEADER: {"$ref": f"#/components/headers/{TRACE_HEADER}"}}
    if route.response_field is not None:
        schema = schemas.field(route.response_field, documented=False)
    else:
        schema = schemas.message(response)
    if binding.streaming:
        item = f"`{response.full_name}`"
        return {
            "description": (
                f"A stream of {item} messages: Server-Sent Events, each `data:` one message "
                "as JSON (`id:` its id when it has one), and an `event: error` whose data is the "
                "error envelope if the stream fails; NDJSON with `Accept: application/x-ndjson`."
            ),
            "headers": headers,
            "content": {
                "text/event-stream": {"schema": {"type": "string"}, "x-item-schema": schema},
                "application/x-ndjson": {"schema": {"type": "string"}, "x-item-schema": schema},
            },
        }
    return {
        "description": "OK",
        "headers": headers,
        "content": {"application/json": {"schema": schema}},
    }


def _error_response() -> dict[str, Any]:
    return {
        "description": (
            "An error. The HTTP status follows grpc-gateway's map from the gRPC code "
            "(e.g. NOT_FOUND → 404, FAILED_PRECONDITION → 400, ABORTED → 409)."
        ),
        "headers": {TRACE_HEADER: {"$ref": f"#/components/headers/{TRACE_HEADER}"}},
        "content": {"application/json": {"schema": ref(ERROR_SCHEMA)}},
    }


def _gateway_schemas() -> dict[str, Schema]:
    codes = [code.name for code in HTTP_STATUS_BY_CODE]
    return {
        ERROR_SCHEMA: {
            "type": "object",
            "description": "The error envelope of every failed request.",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {
                            "type": "string",
                            "enum": codes,
                            "description": "The canonical gRPC code name.",
                        },
                        "message": {"type": "string"},
                        "details": {
                            "type": "array",
                            "description": (
                                "google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo, "
                                "...) as JSON with their `@type`."
                            ),
                            "items": {
                                "type": "object",
                                "properties": {"@type": {"type": "string"}},
                                "required": ["@type"],
                            },
                        },
                        "trace_id": {"type": "string"},
                    },
                    "required": ["code", "message", "details", "trace_id"],
                }
            },
            "required": ["error"],
        },
        HEALTH_SCHEMA: {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["SERVING", "NOT_SERVING"]},
                "components": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Each component's grpc.health.v1 status.",
                },
            },
            "required": ["status", "components"],
        },
    }


def _health_operation() -> dict[str, Any]:
    content = {"application/json": {"schema": ref(HEALTH_SCHEMA)}}
    headers = {TRACE_HEADER: {"$ref": f"#/components/headers/{TRACE_HEADER}"}}
    return {
        "operationId": "Gateway_Health",
        "tags": ["Gateway"],
        "summary": "Health of the services behind the gateway.",
        "description": (
            "Asks grpc.health.v1 Health/Check of every service and dependency; needs no "
            "credentials."
        ),
        "security": [],
        "responses": {
            "200": {
                "description": "Every component serves.",
                "headers": headers,
                "content": content,
            },
            "503": {
                "description": "At least one component does not serve.",
                "headers": headers,
                "content": content,
            },
        },
    }


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n", 1)[0].split())
    found = re.match(r"(.+?\.)(\s|$)", paragraph)
    return found.group(1) if found else paragraph
