"""The ``main()`` of a service run on its own (``python -m sessions_svc`` and friends)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ciq_runtime import telemetry
from ciq_runtime.auth import ApiKeyVerifier, build_auth_interceptor
from ciq_runtime.embedded import EmbeddedError
from ciq_runtime.errors import ContextIQError
from ciq_runtime.logging import configure_logging, settings_secrets
from ciq_runtime.metrics import ProcessMetrics
from ciq_runtime.server import (
    Component,
    GrpcServer,
    PortInUseError,
    default_interceptors,
    run_until_signal,
)
from ciq_runtime.settings import ConfigError, Settings

__all__ = ["ProcessParts", "fail", "run_service"]

log = logging.getLogger(__name__)


@dataclass
class ProcessParts:
    """What a service process serves.

    Attributes:
        components: The components on the process's gRPC port.
        api_keys: Local API-key verifier (the process hosting ApiKeyService); other processes
            verify keys remotely through ``CONTEXTIQ_SESSIONS_ADDR``.
    """

    components: list[Component]
    api_keys: ApiKeyVerifier | None = field(default=None)


def service_names(components: list[Component]) -> list[str]:
    """Every gRPC service name of some components."""
    return [spec.name for component in components for spec in component.services]


def fail(message: str) -> None:
    """Print a one-line error for the operator and exit with status 1 (no traceback)."""
    print(f"contextiq: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def run_service(*, service_name: str, build: Callable[[Settings], ProcessParts]) -> None:
    """Read the settings, serve the components over gRPC until SIGINT/SIGTERM, then stop.

    Args:
        service_name: Name used in logs and settings ("sessions", "memory", "extraction").
        build: Builds what the process serves from the settings.
    """
    try:
        settings = Settings.from_env(service_name=service_name)
    except ConfigError as exc:
        fail(str(exc))
        return
    configure_logging(
        service=service_name,
        level=settings.log_level,
        fmt=settings.log_format,
        secrets=settings_secrets(settings),
    )
    log.info("settings", extra={"settings": settings.redacted_dict()})
    telemetry.setup_tracing(service_name=service_name, otlp_endpoint=settings.otel_endpoint)

    async def main(stop: asyncio.Event) -> None:
        parts = build(settings)
        auth = build_auth_interceptor(
            settings, services=service_names(parts.components), api_keys=parts.api_keys
        )
        server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            components=parts.components,
            interceptors=default_interceptors(auth),
            grace_s=settings.shutdown_grace_s,
            engine=settings.grpc_engine,
        )
        process_metrics: ProcessMetrics | None = None
        try:
            port = await server.start()
            log.info("serving %s on %s:%d", service_name, settings.grpc_host, port)
            if settings.metrics_port:
                process_metrics = await ProcessMetrics.start(
                    settings,
                    tenant_counts=[q for c in parts.components for q in c.tenant_counts],
                    port=settings.metrics_port,
                )
            await stop.wait()
        finally:
            await server.stop()
            if process_metrics is not None:
                await process_metrics.stop()

    try:
        asyncio.run(run_until_signal(main))
    except (ConfigError, EmbeddedError, PortInUseError) as exc:
        fail(str(exc))
    except ContextIQError as exc:
        fail(exc.message)
    except OSError as exc:  # the metrics port
        fail(f"{exc.strerror or exc}: check CONTEXTIQ_METRICS_PORT")
    finally:
        telemetry.shutdown_tracing()
