"""HTTP bindings read from the ``google.api.http`` options of service descriptors.

Everything here is computed once at start-up; a binding is checked against its request message
(every path variable and the body field must exist with a type they can carry) so that a bad
annotation fails the launch, not a request.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from gateway.path_template import PathTemplate

# Packages whose generated ``*_pb2`` modules are imported when a service is not yet in the pool.
_GENERATED_PACKAGES = ("contextiq",)
_EXTRA_MODULES = ("google.longrunning.operations_pb2",)

_PATTERN_METHODS = {
    "get": "GET",
    "put": "PUT",
    "post": "POST",
    "delete": "DELETE",
    "patch": "PATCH",
}


class BindingError(ValueError):
    """A ``google.api.http`` annotation cannot be served."""


@dataclass(frozen=True, slots=True)
class Binding:
    """One HTTP binding of one RPC.

    Attributes:
        service: The service descriptor.
        method: The RPC.
        http_method: Upper-case HTTP method.
        template: The parsed path template.
        body: "" (no body), "*" (the whole request) or the name of the request field.
        response_body: "" (the whole response) or the name of the response field to return.
        index: 0 for the primary binding, 1.. for ``additional_bindings``.
    """

    service: ServiceDescriptor
    method: MethodDescriptor
    http_method: str
    template: PathTemplate
    body: str
    response_body: str
    index: int

    @property
    def grpc_path(self) -> str:
        """The gRPC method path, ``/package.Service/Method``."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        """Whether the RPC streams responses (requests must be unary to be bound)."""
        return bool(self.method.server_streaming)

    @property
    def operation_id(self) -> str:
        """A stable OpenAPI operationId: ``Service_Method`` plus ``_N`` for additional bindings."""
        base = f"{self.service.name}_{self.method.name}"
        return f"{base}_{self.index}" if self.index else base


def find_services(names: Sequence[str]) -> list[ServiceDescriptor]:
    """Finds services by full name in the default descriptor pool.

    Generated modules register their files in the pool when imported; when a name is missing,
    every ``*_pb2`` module of the generated ``contextiq`` package (and google.longrunning) is
    imported once and the lookup retried, so a new proto needs no gateway change.

    Raises:
        BindingError: A name is not defined by any generated module.
    """
    pool = descriptor_pool.Default()
    found: list[ServiceDescriptor] = []
    imported = False
    for name in names:
        try:
            found.append(pool.FindServiceByName(name))
            continue
        except KeyError:
            pass
        if not imported:
            _import_generated_modules()
            imported = True
        try:
            found.append(pool.FindServiceByName(name))
        except KeyError:
            raise BindingError(
                f"unknown service {name!r}: no generated module defines it"
            ) from None
    return found


def _import_generated_modules() -> None:
    for package_name in _GENERATED_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if info.name.endswith("_pb2"):
                importlib.import_module(info.name)
    for module in _EXTRA_MODULES:
        importlib.import_module(module)


def service_bindings(service: ServiceDescriptor) -> Iterator[Binding]:
    """Yields the validated bindings of every annotated RPC of a service.

    Raises:
        BindingError: An annotation is malformed or does not fit its request message.
    """
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            continue
        rule = options.Extensions[annotations_pb2.http]
        rules = [rule, *rule.additional_bindings]
        for index, one in enumerate(rules):
            if index and one.additional_bindings:
                raise BindingError(f"{method.full_name}: additional_bindings cannot nest")
            yield _binding(service, method, one, index)


def _binding(
    service: ServiceDescriptor, method: MethodDescriptor, rule: http_pb2.HttpRule, index: int
) -> Binding:
    where = f"{method.full_name} (binding {index})"
    if method.client_streaming:
        raise BindingError(f"{where}: client-streaming RPCs cannot be bound to HTTP")
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise BindingError(f"{where}: the rule has no HTTP method")
    if pattern == "custom":
        http_method = rule.custom.kind.upper()
        source = rule.custom.path
    else:
        http_method = _PATTERN_METHODS[pattern]
        source = getattr(rule, pattern)
    try:
        template = PathTemplate.parse(source)
    except ValueError as exc:
        raise BindingError(f"{where}: {exc}") from None
    request = method.input_type
    for variable in template.variables:
        leaf = resolve_field_path(request, variable.field_path, where=where)
        if leaf.is_repeated or leaf.type == FieldDescriptor.TYPE_MESSAGE:
            raise BindingError(f"{where}: path variable {variable.name} must be a singular scalar")
    if rule.body not in ("", "*"):
        body_field = request.fields_by_name.get(rule.body)
        if body_field is None:
            raise BindingError(f"{where}: body field {rule.body!r} is not in {request.full_name}")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        output = method.output_type.full_name
        raise BindingError(f"{where}: response_body {rule.response_body!r} is not in {output}")
    return Binding(
        service=service,
        method=method,
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        index=index,
    )


def resolve_field_path(
    message: Descriptor, field_path: Sequence[str], *, where: str
) -> FieldDescriptor:
    """Resolves a dotted field path of proto field names to its leaf field.

    Raises:
        BindingError: A segment does not name a field, or an inner one is not a singular message.
    """
    current = message
    leaf: FieldDescriptor | None = None
    for position, name in enumerate(field_path):
        leaf = current.fields_by_name.get(name)
        if leaf is None:
            raise BindingError(
                f"{where}: {'.'.join(field_path)}: no field {name!r} in {current.full_name}"
            )
        if position < len(field_path) - 1:
            if leaf.message_type is None or leaf.is_repeated:
                raise BindingError(
                    f"{where}: {'.'.join(field_path)}: {name} is not a singular message"
                )
            current = leaf.message_type
    assert leaf is not None  # field_path is never empty: the template grammar needs an IDENT
    return leaf
