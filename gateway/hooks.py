"""The extension point for policies applied before a request goes upstream.

Rate limiting and authentication are not the gateway's job today (the gRPC services enforce
auth), but a hook can do either: it sees the matched route, the client and the metadata about to
be sent, may add metadata, and rejects a request by raising ``GatewayError`` (e.g.
RESOURCE_EXHAUSTED with a ``Retry-After`` header, or UNAUTHENTICATED).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import Headers

from gateway.forwarding import Metadata
from gateway.routes import Route


@dataclass(frozen=True, slots=True)
class HookContext:
    """What a hook may look at.

    Attributes:
        route: The matched route (binding, RPC, upstream).
        http_method: The request method.
        path: The decoded request path.
        headers: The request headers.
        client: The client's (host, port), when the server knows it.
        metadata: The gRPC metadata that will be sent; a hook may append to it.
    """

    route: Route
    http_method: str
    path: str
    headers: Headers
    client: tuple[str, int] | None
    metadata: Metadata


RequestHook = Callable[[HookContext], Awaitable[None]]
