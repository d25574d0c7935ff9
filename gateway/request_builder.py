"""Builds the gRPC request message from an HTTP request, as grpc-gateway does.

Order: the body (``body: "*"`` is the whole request, ``body: "field"`` is that field's JSON), then
query parameters for fields bound neither by the path nor by the body, then the path variables.
A path variable whose field the body also sets must agree with it.

Update masks (AIP-134): on PATCH, when the request has a top-level ``update_mask`` FieldMask that
the client did not give, it is filled with the top-level keys of the body field's JSON object
(``body: "*"``: the body's keys minus the fields bound by the path). Mask paths are accepted in
proto (``user_id``) or JSON (``userId``) spelling and resolved against the updated message; a
path into a map or Struct keeps its keys verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import GatewayError, invalid_argument
from gateway.fields import (
    descriptor_of,
    find_field,
    plain_message,
    resolve_parameter,
    string_to_json,
)
from gateway.routes import PathField, Route

_UNKNOWN_FIELD: Final = re.compile(r'has no field named "([^"]+)" at "([^"]*)"')
_FAILED_FIELD: Final = re.compile(r"Failed to parse (\w+) field")
# json_format ends most messages with the location: "... at Message.field.sub."
_LOCATION: Final = re.compile(r" at \"?[\w]+\.([\w.]+?)\"?\.?$")
_MASK_JSON_NAMES: Final = ("update_mask", "updateMask")


def build_request(
    route: Route,
    *,
    path_values: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
) -> Message:
    """Builds the request message of a matched route.

    Args:
        route: The matched route.
        path_values: Decoded path variables by dotted field path.
        query: Decoded query parameters in order (repeated names repeat).
        body: The raw request body (may be empty).

    Raises:
        GatewayError: INVALID_ARGUMENT naming the problem (malformed JSON, unknown field, bad
            value, body on a method without one, path/body disagreement, ...).
    """
    message = route.request_class()
    body_keys = _apply_body(route, message, body)
    if query:
        _apply_query(route, message, query)
    for path_field in route.path_fields:
        _apply_path_value(message, path_field, path_values[path_field.variable.name])
    mask_field = route.mask_field
    if mask_field is not None and body_keys is not None:
        mask = getattr(message, mask_field.name)
        if not message.HasField(mask_field.name) or not mask.paths:
            inferred = [
                key
                for key in body_keys
                if route.body_field is not None
                or (key not in route.path_roots and key != mask_field.name)
            ]
            mask.paths.extend(inferred)
    return message


def _apply_body(route: Route, message: Message, body: bytes) -> list[str] | None:
    """Parses the body into the message; returns its top-level keys (proto names) if an object."""
    binding_body = route.binding.body
    if not binding_body:
        if body:
            raise invalid_argument(
                f"{route.binding.http_method} {route.binding.template.source} takes no request body"
            )
        return None
    if not body:
        return [] if route.mask_field is not None else None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_argument(f"malformed JSON in the request body: {exc}") from None
    if binding_body == "*":
        if not isinstance(payload, dict):
            raise invalid_argument("the request body must be a JSON object")
        if route.mask_field is not None:
            _take_mask(route, message, payload)
        _parse(payload, message, where="request body")
        return _proto_keys(descriptor_of(message), payload)
    body_field = route.body_field
    assert body_field is not None  # a named body always has its field (checked at start-up)
    _parse({body_field.name: payload}, message, where="request body")
    if isinstance(payload, dict) and body_field.message_type is not None:
        return _proto_keys(body_field.message_type, payload)
    return None


def _take_mask(route: Route, message: Message, payload: dict[str, Any]) -> None:
    """Moves an ``update_mask`` out of a ``body: "*"`` payload into the message, resolved."""
    mask_field = route.mask_field
    assert mask_field is not None
    for name in _MASK_JSON_NAMES:
        if name in payload:
            value = payload.pop(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise invalid_argument(
                    f"{mask_field.name} must be a string of comma-separated field paths",
                    field=mask_field.name,
                )
            getattr(message, mask_field.name).paths.extend(resolve_mask(value, route.mask_target))


def resolve_mask(value: str, target: Descriptor) -> list[str]:
    """Resolves comma-separated mask paths against a message, in proto or JSON spelling.

    Each segment naming a field becomes its proto name; segments after a map, Struct or other
    non-message field are keys and are kept verbatim.
    """
    paths: list[str] = []
    for raw in value.split(","):
        path = raw.strip()
        if not path:
            continue
        current: Descriptor | None = target
        resolved: list[str] = []
        for segment in path.split("."):
            field = find_field(current, segment) if current is not None else None
            if field is None:
                resolved.append(segment)
                current = None
                continue
            resolved.append(field.name)
            current = None if field.is_repeated else plain_message(field)
        paths.append(".".join(resolved))
    return paths


def _proto_keys(descriptor: Descriptor, payload: dict[str, Any]) -> list[str]:
    keys: list[str] = []
    for key in payload:
        field = find_field(descriptor, key)
        if field is not None and field.name not in keys:
            keys.append(field.name)
    return keys


def _apply_query(route: Route, message: Message, query: Sequence[tuple[str, str]]) -> None:
    binding = route.binding
    if binding.body == "*":
        name = query[0][0]
        raise invalid_argument(
            f"query parameter {name!r} is not allowed: the request body carries every field of "
            f"{binding.method.input_type.name}",
            field=name,
        )
    descriptor = descriptor_of(message)
    tree: dict[str, Any] = {}
    for name, value in query:
        chain = resolve_parameter(descriptor, name)
        root = chain[0].name
        if root in route.path_roots:
            raise invalid_argument(
                f"query parameter {name!r} is not allowed: the path sets {root}", field=name
            )
        if route.body_field is not None and root == route.body_field.name:
            raise invalid_argument(
                f"query parameter {name!r} is not allowed: the request body is {root}", field=name
            )
        if route.mask_field is not None and chain == [route.mask_field]:
            getattr(message, route.mask_field.name).paths.extend(
                resolve_mask(value, route.mask_target)
            )
            continue
        _insert(tree, chain, string_to_json(chain[-1], value, name=name), name=name)
    if tree:
        _parse(tree, message, where="query parameters")


def _insert(
    tree: dict[str, Any], chain: list[FieldDescriptor], value: object, *, name: str
) -> None:
    node = tree
    for field in chain[:-1]:
        child = node.setdefault(field.name, {})
        if not isinstance(child, dict):
            raise invalid_argument(f"query parameter {name!r} conflicts with another", field=name)
        node = child
    leaf = chain[-1]
    if leaf.is_repeated:
        values = node.setdefault(leaf.name, [])
        if not isinstance(values, list):
            raise invalid_argument(f"query parameter {name!r} conflicts with another", field=name)
        values.append(value)
    elif leaf.name in node:
        raise invalid_argument(
            f"query parameter {name!r} is given more than once but is not repeated", field=name
        )
    else:
        node[leaf.name] = value


def _apply_path_value(message: Message, path_field: PathField, value: str) -> None:
    """Sets a path variable's field; a different value already set by the body is an error."""
    name = path_field.variable.name
    parent = message
    for field in path_field.chain[:-1]:
        parent = getattr(parent, field.name)
    leaf = path_field.chain[-1]
    if leaf.type == FieldDescriptor.TYPE_STRING:
        new_value: Any = value  # the common case, without a round trip through json_format
    else:
        scratch = type(parent)()
        try:
            json_format.ParseDict({leaf.name: string_to_json(leaf, value, name=name)}, scratch)
        except json_format.ParseError as exc:
            raise invalid_argument(f"path parameter {name}: {_clean(exc)}", field=name) from None
        new_value = getattr(scratch, leaf.name)
    already_set = (
        parent.HasField(leaf.name)
        if leaf.has_presence
        else getattr(parent, leaf.name) != leaf.default_value
    )
    if already_set and getattr(parent, leaf.name) != new_value:
        raise invalid_argument(
            f"{name} is {value!r} in the path but {getattr(parent, leaf.name)!r} in the body",
            field=name,
        )
    setattr(parent, leaf.name, new_value)


def _parse(payload: dict[str, Any], message: Message, *, where: str) -> None:
    try:
        json_format.ParseDict(payload, message)
    except json_format.ParseError as exc:
        raise _parse_error(exc, where=where) from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. values out of range
        raise invalid_argument(f"invalid {where}: {exc}") from None


def _parse_error(exc: json_format.ParseError, *, where: str) -> GatewayError:
    text = str(exc)
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown is not None:
        field, location = unknown.groups()
        inner = location.split(".", 1)[1] if "." in location else ""
        dotted = f"{inner}.{field}" if inner else field
        return invalid_argument(f"invalid {where}: unknown field {dotted!r}", field=dotted)
    first_line = _clean(exc)
    location = _LOCATION.search(first_line)
    # Else nested failures read "Failed to parse a field: Failed to parse b field: ...".
    field = location.group(1) if location else ".".join(_FAILED_FIELD.findall(text))
    return invalid_argument(f"invalid {where}: {first_line}", field=field or None)


def _clean(exc: Exception) -> str:
    """The first line of a json_format message (the rest lists every field name)."""
    return str(exc).splitlines()[0].strip()
