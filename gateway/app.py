"""``create_app``: the gateway's ASGI application, built from service descriptors.

The app is one plain ASGI object rather than a Starlette application: a request goes through
one outer layer (``RequestMiddleware``: span, trace id, metrics, last-resort envelope), then
either a built-in endpoint (an exact path) or the transcoder. Starlette's middleware stack,
router and mount cost more per request than the gateway's own work did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.bindings import find_services, service_bindings
from gateway.comments import SourceComments
from gateway.docs_page import DOCS_HTML
from gateway.errors import JSON_MEDIA_TYPE, GatewayError
from gateway.health import NOT_SERVING, SERVING, HealthChecker
from gateway.hooks import RequestHook
from gateway.json_output import JsonEncoder
from gateway.metrics import GatewayMetrics
from gateway.middleware import RequestMiddleware, request_info
from gateway.openapi import build_document
from gateway.router import Router
from gateway.routes import Route as GatewayRoute
from gateway.routes import build_route
from gateway.transcoder import Transcoder
from gateway.upstream import ChannelOptions, UpstreamPool

_log = logging.getLogger(__name__)

HEALTH_PATH: Final = "/health"
METRICS_PATH: Final = "/metrics"
OPENAPI_PATH: Final = "/openapi.json"
DOCS_PATH: Final = "/docs"


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What the app is made of, at ``app.state.gateway`` (for the launcher and tests).

    Attributes:
        routes: Every served route.
        openapi: The OpenAPI document.
        metrics: The app's metrics (its own Prometheus registry).
        pool: The upstream channels.
    """

    routes: tuple[GatewayRoute, ...]
    openapi: Mapping[str, Any]
    metrics: GatewayMetrics
    pool: UpstreamPool


def create_app(
    *,
    routes_from: Sequence[str],
    upstreams: Mapping[str, str],
    health_names: Mapping[str, str] | None = None,
    request_timeout_s: float = 30.0,
    max_body_bytes: int = 4 * 1024 * 1024,
    hooks: Sequence[RequestHook] = (),
    descriptor_sets: Sequence[bytes] = (),
    channel_options: ChannelOptions = (),
    channel_credentials: grpc.ChannelCredentials | None = None,
    title: str = "ContextIQ REST API",
    extra_metrics: Sequence[CollectorRegistry] = (),
) -> GatewayApp:
    """Builds the gateway app; every route is computed and checked here, before serving.

    Args:
        routes_from: Full names of the services whose ``google.api.http`` bindings are served.
        upstreams: Service full name → ``host:port`` of its gRPC server; every service of
            ``routes_from`` needs one.
        health_names: Extra health components (e.g. ``postgres``, ``nats``) → the address of
            the process whose health servicer reports on them. Every routed service is a
            component too.
        request_timeout_s: Deadline of unary calls when the request sets none.
        max_body_bytes: Largest request body accepted; the default matches gRPC's default
            maximum message size.
        hooks: Policies (rate limiting, auth, ...) run before each upstream call.
        descriptor_sets: Extra serialized FileDescriptorSets with source info, for the
            descriptions of services not in the packaged set.
        channel_options: gRPC channel arguments for the upstream channels.
        channel_credentials: TLS credentials for the upstream channels; plaintext when None.
        title: Title of the OpenAPI document.
        extra_metrics: More registries ``/metrics`` serves after the gateway's own (the
            process's services and workers when they share the process, as in ``make run``).

    Raises:
        BindingError: A service is unknown or one of its bindings cannot be served.
        ValueError: A service has no upstream address, or two bindings collide.
    """
    services = find_services(routes_from)
    routes: list[GatewayRoute] = []
    for service in services:
        address = upstreams.get(service.full_name)
        if not address:
            raise ValueError(f"no upstream address for {service.full_name}")
        routes.extend(build_route(binding, address) for binding in service_bindings(service))
    router = Router(routes)
    comments = SourceComments.packaged(descriptor_sets)
    document = build_document(
        router.routes, comments=comments, title=title, request_timeout_s=request_timeout_s
    )
    openapi_body = json.dumps(document, ensure_ascii=False).encode()

    pool = UpstreamPool(channel_options=channel_options, credentials=channel_credentials)
    metrics = GatewayMetrics(extra=extra_metrics)
    components = {service.full_name: upstreams[service.full_name] for service in services}
    components.update(health_names or {})
    checker = HealthChecker(pool=pool, components=components)
    transcoder = Transcoder(
        router=router,
        pool=pool,
        encoder=JsonEncoder(),
        request_timeout_s=request_timeout_s,
        max_body_bytes=max_body_bytes,
        hooks=hooks,
    )

    async def health(_: Request) -> Response:
        serving, report = await checker.check()
        body = {"status": SERVING if serving else NOT_SERVING, "components": report}
        return Response(
            json.dumps(body), status_code=200 if serving else 503, media_type=JSON_MEDIA_TYPE
        )

    async def metrics_page(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(_: Request) -> Response:
        return Response(openapi_body, media_type=JSON_MEDIA_TYPE)

    async def docs(_: Request) -> Response:
        return HTMLResponse(DOCS_HTML)

    app = GatewayApp(
        builtins={
            HEALTH_PATH: _Builtin(health, HEALTH_PATH),
            METRICS_PATH: _Builtin(metrics_page, METRICS_PATH),
            OPENAPI_PATH: _Builtin(openapi, OPENAPI_PATH),
            DOCS_PATH: _Builtin(docs, DOCS_PATH),
        },
        transcoder=transcoder,
        metrics=metrics,
        pool=pool,
    )
    app.state.gateway = GatewayState(
        routes=tuple(router.routes), openapi=document, metrics=metrics, pool=pool
    )
    _log.info("REST gateway: %d routes from %d services", len(routes), len(services))
    return app


class _Builtin:
    """A gateway endpoint (GET/HEAD only) answering other methods with the 405 envelope.

    It sees every method of its path, so a wrong method gets the envelope, not a plain 405.
    """

    _METHODS: Final = ("GET", "HEAD")

    def __init__(self, handler: Callable[[Request], Awaitable[Response]], label: str) -> None:
        self._handler = handler
        self._label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = request_info(scope)
        info.route = self._label
        if scope["method"] not in self._METHODS:
            error = GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {scope['method']} is not allowed on {self._label}; allowed: GET",
                status=405,
                headers={"Allow": "GET, HEAD"},
            )
            response = error.to_response(info.trace.trace_id)
        else:
            response = await self._handler(Request(scope, receive))
        await response(scope, receive, send)


class GatewayApp:
    """The gateway's ASGI app: built-in endpoints by exact path, every other path transcoded.

    Attributes:
        state: ``state.gateway`` is the app's ``GatewayState`` (for the launcher and tests).
    """

    def __init__(
        self,
        *,
        builtins: Mapping[str, ASGIApp],
        transcoder: Transcoder,
        metrics: GatewayMetrics,
        pool: UpstreamPool,
    ) -> None:
        """Assembles the app from its parts (``create_app`` builds them)."""
        self.state = State()
        self._builtins = dict(builtins)
        self._transcoder = transcoder
        self._pool = pool
        self._http = RequestMiddleware(self._dispatch, metrics=metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serves one ASGI scope: HTTP, lifespan, or a WebSocket (refused)."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # nothing is bound to a WebSocket
            await send({"type": "websocket.close", "code": 1003})

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._builtins.get(scope["path"])
        if endpoint is None:
            await self._transcoder(scope, receive, send)
        else:
            await endpoint(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start-up has nothing to do; shutdown closes the upstream channels."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self._pool.close()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which logs it
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return
