"""``make run``: the whole ContextIQ stack in one process, on its embedded default.

Starts a real PostgreSQL (from the ``pgserver`` package, data kept under the data directory),
a real ``nats-server`` with JetStream, every servicer on one gRPC port and the REST gateway,
prints where everything listens, and on Ctrl-C / SIGTERM stops all of it in reverse order.
``DATABASE_URL`` / ``NATS_URL`` switch to external servers instead of the embedded ones.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from ciq_runtime import metrics, telemetry
from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres
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
from ciq_runtime.service_main import fail, service_names
from ciq_runtime.settings import ConfigError, Settings

__all__ = ["check_ports_free", "ensure_jwt_secret", "main", "prepare_data_dir"]

log = logging.getLogger("contextiq.stack")


def _builders() -> list[tuple[str, Callable[[Settings], Component]]]:
    # Imported here, not at module level: the runtime package must not depend on the services
    # except in this composition root.
    from extraction_svc.component import build_component as build_extraction
    from memory_svc.component import build_component as build_memory
    from sessions_svc.component import build_component as build_sessions

    return [
        ("sessions", build_sessions),
        ("memory", build_memory),
        ("extraction", build_extraction),
    ]


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory or check that the existing one is usable.

    Args:
        path: ``CONTEXTIQ_DATA_DIR`` (default ``./.contextiq``).

    Returns:
        The absolute path.

    Raises:
        EmbeddedError: With a one-line message when the path cannot hold the data.
    """
    path = path.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise EmbeddedError(
            f"{path} is not a directory: move it away or set CONTEXTIQ_DATA_DIR to a folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise EmbeddedError(
            f"cannot write to the data directory {path} ({exc.strerror}): "
            "fix its permissions or set CONTEXTIQ_DATA_DIR to a writable folder"
        ) from exc
    return path


def ensure_jwt_secret(data_dir: Path) -> str:
    """The stack's JWT secret when ``CONTEXTIQ_JWT_SECRET`` is unset: made once, kept.

    Stored in ``<data_dir>/jwt_secret`` (mode 0600) so that tokens stay valid across restarts.

    Args:
        data_dir: The prepared data directory.

    Returns:
        The secret.
    """
    path = data_dir / "jwt_secret"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    secret = secrets.token_urlsafe(48)
    # O_EXCL: two launchers sharing a data dir must not overwrite each other's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def check_ports_free(settings: Settings) -> None:
    """Fail before starting anything when a port the stack needs is taken.

    Args:
        settings: The stack's settings.

    Raises:
        EmbeddedError: A one-line message naming the port and the variable that moves it.
    """
    wanted = [
        (settings.grpc_host, settings.grpc_port, "CONTEXTIQ_GRPC_PORT"),
        (settings.http_host, settings.http_port, "CONTEXTIQ_HTTP_PORT"),
    ]
    if settings.metrics_port:
        wanted.append((settings.grpc_host, settings.metrics_port, "CONTEXTIQ_METRICS_PORT"))
    if not settings.database_url:
        wanted.append(("127.0.0.1", settings.pg_port, "CONTEXTIQ_PG_PORT"))
    if not settings.nats_url:
        wanted.append(("127.0.0.1", settings.nats_port, "CONTEXTIQ_NATS_PORT"))
    for host, port, variable in wanted:
        if port == 0:
            continue
        try:
            # SO_REUSEADDR as the servers themselves bind: TIME_WAIT leftovers are not "in use".
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EmbeddedError(
                    f"port {port} on {host} is in use: stop the other process "
                    f"or set {variable} to a free port"
                ) from exc
            raise EmbeddedError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc


async def _run(settings: Settings, stop: asyncio.Event) -> None:
    from gateway.app import create_app
    from gateway.server import serve
    from gateway.settings import DEFAULT_SERVICES

    data_dir = prepare_data_dir(settings.data_dir)
    check_ports_free(settings)
    grpc_addr = f"{settings.grpc_host}:{settings.grpc_port}"
    async with AsyncExitStack() as stack:
        database_url = settings.database_url
        if not database_url:
            pg = EmbeddedPostgres(data_dir=data_dir / "pg", host="127.0.0.1", port=settings.pg_port)
            stack.push_async_callback(pg.stop)
            database_url = (await pg.start()).url
        nats_url = settings.nats_url
        if not nats_url:
            nats = EmbeddedNats(
                store_dir=data_dir / "nats", host="127.0.0.1", port=settings.nats_port
            )
            stack.push_async_callback(nats.stop)
            nats_url = await nats.start()

        if not settings.jwt_secret and not settings.auth_disabled:
            # The worker calls the sessions and memory services with JWTs it signs itself.
            settings = settings.replace(jwt_secret=ensure_jwt_secret(data_dir))
        settings = settings.replace(
            database_url=database_url,
            nats_url=nats_url,
            sessions_addr=grpc_addr,
            memory_addr=grpc_addr,
            extraction_addr=grpc_addr,
        )
        from sessions_svc.apikeys.component import build_apikeys

        keys = build_apikeys(settings)
        components = [keys.component] + [build(settings) for _, build in _builders()]
        auth = build_auth_interceptor(
            settings, services=service_names(components), api_keys=keys.verifier
        )
        server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            components=components,
            interceptors=default_interceptors(auth),
            grace_s=settings.shutdown_grace_s,
            engine=settings.grpc_engine,
        )
        stack.push_async_callback(server.stop)
        grpc_port = await server.start()
        upstream = f"{settings.grpc_host}:{grpc_port}"

        # One process, one scrape target: the gateway's /metrics also serves the services' and
        # the worker's registry; CONTEXTIQ_METRICS_PORT adds a separate endpoint if set.
        process_metrics = await ProcessMetrics.start(
            settings,
            tenant_counts=[q for c in components for q in c.tenant_counts],
            port=settings.metrics_port or None,
        )
        stack.push_async_callback(process_metrics.stop)

        # Every REST-exposed service is on this one port (MemoryJobService is internal).
        app = create_app(
            routes_from=DEFAULT_SERVICES,
            upstreams=dict.fromkeys(DEFAULT_SERVICES, upstream),
            health_names=dict.fromkeys(server.health_names, upstream),
            extra_metrics=[metrics.REGISTRY],
        )
        gw = await serve(app, host=settings.http_host, port=settings.http_port)
        stack.push_async_callback(gw.stop)

        first_key = None
        if not settings.auth_disabled and not settings.bootstrap_api_key:
            first_key = await keys.ensure_admin_key()
        _print_banner(
            grpc=f"{settings.grpc_host}:{grpc_port}",
            http=gw.url,
            database=database_url,
            nats=nats_url,
            data_dir=data_dir,
        )
        _print_auth(settings, first_key)
        print("Press Ctrl-C to stop.", flush=True)
        await stop.wait()
        print("contextiq: stopping…", file=sys.stderr, flush=True)


def _print_banner(*, grpc: str, http: str, database: str, nats: str, data_dir: Path) -> None:
    from ciq_runtime.settings import redact_url

    lines = [
        "ContextIQ is up.",
        f"  gRPC      {grpc}        (grpcurl -plaintext {grpc} list)",
        f"  REST      {http}    (docs {http}/docs, health {http}/health)",
        f"  Postgres  {redact_url(database)}",
        f"  NATS      {redact_url(nats, mask_username_only=True)}",
        f"  data      {data_dir}",
    ]
    print("\n".join(lines), flush=True)


def _print_auth(settings: Settings, first_key: str | None) -> None:
    if settings.auth_disabled:
        print("  auth      DISABLED (CONTEXTIQ_AUTH_DISABLED=true)", flush=True)
    elif first_key is not None:
        print(
            "  auth      admin API key for the default tenant, shown once:\n"
            f"            {first_key}\n"
            "            send it as 'X-API-Key' (REST) or 'x-api-key' (gRPC metadata)",
            flush=True,
        )
    elif settings.bootstrap_api_key:
        print("  auth      CONTEXTIQ_BOOTSTRAP_API_KEY is an admin key of the default tenant")
    else:
        print(
            "  auth      use the admin key printed by the first run, or set "
            "CONTEXTIQ_BOOTSTRAP_API_KEY=ck_…",
            flush=True,
        )


def main() -> None:
    """Entry point of ``python -m ciq_runtime.stack`` (``make run``)."""
    try:
        settings = Settings.from_env(service_name="stack")
    except ConfigError as exc:
        fail(str(exc))
        return
    configure_logging(
        service="contextiq",
        level=settings.log_level,
        fmt=settings.log_format,
        secrets=settings_secrets(settings),
    )
    telemetry.setup_tracing(service_name="contextiq", otlp_endpoint=settings.otel_endpoint)
    from gateway.server import GatewayStartError

    try:
        asyncio.run(run_until_signal(lambda stop: _run(settings, stop)))
    except (ConfigError, EmbeddedError, PortInUseError, GatewayStartError) as exc:
        fail(str(exc))
    except ContextIQError as exc:
        fail(exc.message)
    except OSError as exc:
        fail(f"{exc.strerror or exc}: check the ports and the data directory")
    finally:
        telemetry.shutdown_tracing()


if __name__ == "__main__":
    main()
