"""``python -m gateway``: the REST gateway on its own, configured from the environment.

CONTEXTIQ_HTTP_HOST (127.0.0.1) and CONTEXTIQ_HTTP_PORT (8080) say where to listen;
CONTEXTIQ_SESSIONS_ADDR, CONTEXTIQ_MEMORY_ADDR (memory, memory banks, procedural, operations)
and CONTEXTIQ_EXTRACTION_ADDR where the services are. Unset addresses are not routed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from ciq_runtime import metrics, telemetry
from ciq_runtime.logging import configure_logging
from gateway.app import create_app
from gateway.server import GatewayServer, GatewayStartError
from gateway.settings import DEFAULT_SERVICES, GatewaySettings, SettingsError

_log = logging.getLogger("gateway")


async def run(settings: GatewaySettings) -> None:
    """Serves until SIGINT or SIGTERM."""
    services = [name for name in DEFAULT_SERVICES if name in settings.upstreams]
    if not services:
        _log.warning("no CONTEXTIQ_*_ADDR is set: only /health, /metrics and /docs are served")
    app = create_app(
        routes_from=services,
        upstreams=settings.upstreams,
        request_timeout_s=settings.request_timeout_s,
        extra_metrics=[metrics.REGISTRY],
    )
    server = GatewayServer(app, host=settings.host, port=settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> int:
    """Entry point; returns the exit status."""
    try:
        # One JSON line per event, like the services (CONTEXTIQ_LOG_LEVEL / _FORMAT).
        configure_logging(
            service="gateway",
            level=os.environ.get("CONTEXTIQ_LOG_LEVEL") or "INFO",
            fmt=(os.environ.get("CONTEXTIQ_LOG_FORMAT") or "json").lower(),
        )
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    # Spans are exported only when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    telemetry.setup_tracing(
        service_name="gateway", otlp_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    )
    try:
        settings = GatewaySettings.from_env(os.environ)
        asyncio.run(run(settings))
    except (SettingsError, GatewayStartError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        telemetry.shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
