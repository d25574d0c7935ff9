"""Routes: a binding with everything a request needs precomputed at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.bindings import Binding, resolve_field_path
from gateway.fields import FIELD_MASK, plain_message
from gateway.path_template import Variable

# The AIP-134 field that PATCH fills from the body when the client leaves it out.
UPDATE_MASK_FIELD: Final = "update_mask"
# The response field, when the streamed message has one, that becomes the SSE ``id:``.
STREAM_ID_FIELD: Final = "id"


@dataclass(frozen=True, slots=True)
class PathField:
    """A path variable and the request fields it sets."""

    variable: Variable
    chain: tuple[FieldDescriptor, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """A binding ready to serve.

    Attributes:
        binding: The HTTP binding.
        upstream: ``host:port`` of the service.
        request_class: Message class of the request.
        response_class: Message class of the response.
        path_fields: Path variables with their field chains.
        path_roots: Top-level request fields set (partly) by the path.
        body_field: The request field the body is, for ``body: "<field>"``.
        mask_field: The top-level ``update_mask`` FieldMask of a PATCH, which is inferred from
            the body when absent.
        mask_target: The message update-mask paths are relative to: the body field's message,
            else the request.
        response_field: The response field returned, for ``response_body``.
        stream_id_field: The scalar ``id`` field of a streamed message, for SSE ``id:`` lines.
    """

    binding: Binding
    upstream: str
    request_class: type[Message]
    response_class: type[Message]
    path_fields: tuple[PathField, ...]
    path_roots: frozenset[str]
    body_field: FieldDescriptor | None
    mask_field: FieldDescriptor | None
    mask_target: Descriptor
    response_field: FieldDescriptor | None
    stream_id_field: FieldDescriptor | None

    @property
    def label(self) -> str:
        """The route's template, as used for metrics labels."""
        return self.binding.template.source


def build_route(binding: Binding, upstream: str) -> Route:
    """Precomputes the route of a validated binding."""
    request = binding.method.input_type
    response = binding.method.output_type
    where = binding.method.full_name
    path_fields = tuple(
        PathField(
            variable=v,
            chain=_chain(request, v.field_path, where=where),
        )
        for v in binding.template.variables
    )
    body_field = request.fields_by_name[binding.body] if binding.body not in ("", "*") else None
    mask_field = request.fields_by_name.get(UPDATE_MASK_FIELD)
    if (
        binding.http_method != "PATCH"
        or mask_field is None
        or mask_field.message_type is None
        or mask_field.message_type.full_name != FIELD_MASK
        or mask_field.is_repeated
        or binding.body == ""
    ):
        mask_field = None
    mask_target = (plain_message(body_field) if body_field is not None else None) or request
    response_field = (
        response.fields_by_name[binding.response_body] if binding.response_body else None
    )
    return Route(
        binding=binding,
        upstream=upstream,
        request_class=message_factory.GetMessageClass(request),
        response_class=message_factory.GetMessageClass(response),
        path_fields=path_fields,
        path_roots=frozenset(v.field_path[0] for v in binding.template.variables),
        body_field=body_field,
        mask_field=mask_field,
        mask_target=mask_target,
        response_field=response_field,
        stream_id_field=_stream_id_field(response) if binding.streaming else None,
    )


def _chain(
    message: Descriptor, field_path: tuple[str, ...], *, where: str
) -> tuple[FieldDescriptor, ...]:
    chain: list[FieldDescriptor] = []
    current = message
    for depth in range(len(field_path)):
        field = resolve_field_path(current, field_path[depth : depth + 1], where=where)
        chain.append(field)
        if field.message_type is not None:
            current = field.message_type
    return tuple(chain)


def _stream_id_field(message: Descriptor) -> FieldDescriptor | None:
    field = message.fields_by_name.get(STREAM_ID_FIELD)
    if field is None or field.is_repeated or field.message_type is not None:
        return None
    return field
