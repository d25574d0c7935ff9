"""Honest UNIMPLEMENTED answers for RPCs that are not built yet.

The generated servicer base classes answer UNIMPLEMENTED with grpc's generic text from a
synchronous method. :func:`answer_unimplemented` replaces every method a servicer does not
implement with an async one raising :class:`~ciq_runtime.errors.Unimplemented`, so the error
interceptor turns it into a ``google.rpc.Status`` naming the RPC (and REST shows 501 with that
message), exactly like every other domain error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from ciq_runtime.errors import Unimplemented

__all__ = ["answer_unimplemented"]

_C = TypeVar("_C", bound=type)


def answer_unimplemented(service: ServiceDescriptor, generated_base: type) -> Callable[[_C], _C]:
    """Class decorator: methods the servicer inherits from the generated base raise UNIMPLEMENTED.

    Args:
        service: The proto service descriptor.
        generated_base: The generated ``XServicer`` class the servicer derives from.

    Returns:
        The decorator.
    """

    def decorate(cls: _C) -> _C:
        for method in service.methods:
            if getattr(cls, method.name) is not getattr(generated_base, method.name):
                continue  # implemented by the servicer
            setattr(cls, method.name, _unimplemented(f"{service.full_name}/{method.name}"))
        return cls

    return decorate


def _unimplemented(rpc: str) -> Callable[..., Any]:
    async def handler(self: object, request: object, context: object) -> None:
        raise Unimplemented(f"{rpc} is not implemented yet in this ContextIQ version")

    handler.__name__ = rpc.rpartition("/")[2]
    return handler
