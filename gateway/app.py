"""``create_app``: the gateway's Starlette application, built from service descriptors."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from gateway.bindings import find_services, service_bindings
from gateway.comments import SourceComments
from gateway.docs_page import DOCS_HTML
from gateway.errors import JSON_MEDIA_TYPE, GatewayError, internal_error
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
) -> Starlette:
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

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await pool.close()

    app = Starlette(
        routes=[
            Route(HEALTH_PATH, _Builtin(health, HEALTH_PATH)),
            Route(METRICS_PATH, _Builtin(metrics_page, METRICS_PATH)),
            Route(OPENAPI_PATH, _Builtin(openapi, OPENAPI_PATH)),
            Route(DOCS_PATH, _Builtin(docs, DOCS_PATH)),
            Mount("/", app=transcoder),
        ],
        middleware=[Middleware(RequestMiddleware, metrics=metrics)],
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.gateway = GatewayState(
        routes=tuple(router.routes), openapi=document, metrics=metrics, pool=pool
    )
    _log.info("REST gateway: %d routes from %d services", len(routes), len(services))
    return app


class _Builtin:
    """A gateway endpoint (GET/HEAD only) answering other methods with the 405 envelope.

    An ASGI class rather than a function: Starlette then hands it every method, so a wrong
    method gets the envelope instead of a plain-text 405.
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


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = grpc.StatusCode.NOT_FOUND if exc.status_code == 404 else grpc.StatusCode.UNKNOWN
    error = GatewayError(code, exc.detail, status=exc.status_code, headers=exc.headers)
    return error.to_response(request_info(request.scope).trace.trace_id)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Runs in Starlette's outermost layer, outside RequestMiddleware: add the trace header here.
    trace_id = request_info(request.scope).trace.trace_id
    _log.error("unexpected error (trace_id=%s)", trace_id, exc_info=exc)
    response = internal_error().to_response(trace_id)
    response.headers["X-Trace-Id"] = trace_id
    return response
