"""Async gRPC server bootstrap shared by every ContextIQ process.

A process is a list of :class:`Component` s (the embedded stack hosts all of them on one port,
a Deployment hosts one). :class:`GrpcServer` starts their lifecycle hooks, registers their
services with health and reflection, and shuts everything down gracefully;
:func:`run_until_signal` turns SIGINT/SIGTERM into a stop event for ``main``.

Two server implementations can serve the port (``CONTEXTIQ_GRPC_ENGINE``):

* ``native`` (the default): ``pygrpc_native.aio.server``, whose HTTP/2 and gRPC work (framing,
  flow control, deadlines, cancellation) runs in Rust on its own threads, outside the GIL. The
  handlers, interceptors and generated code are grpc.aio's, unchanged, and run on this event
  loop. Unary and server-streaming methods registered by generated code are served natively;
  the rest (client and bidirectional streams: server reflection) go to a grpc.aio server on a
  private Unix socket behind it. On the 2-core machine it halves the sessions service's CPU per
  append (see ``bench/sessions_bench.py``). It has no TLS; ContextIQ serves plaintext gRPC
  inside the cluster either way.
* ``grpcio``: ``grpc.aio.server`` itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_reflection.v1alpha import reflection

from ciq_runtime.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from ciq_runtime.health import DependencyChecks, HealthCheck, HealthReporter
from ciq_runtime.interceptors import CallGuard, RpcInterceptor
from ciq_runtime.metrics import TenantCountQuery
from ciq_runtime.settings import GRPC_ENGINES, GrpcEngine

__all__ = [
    "Component",
    "GrpcServer",
    "PortInUseError",
    "ServerStartError",
    "ServiceSpec",
    "default_interceptors",
    "run_until_signal",
]

log = logging.getLogger(__name__)

_OVERALL = ""  # the health name of the whole server


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service of a component.

    Attributes:
        name: Fully-qualified proto service name, e.g. ``contextiq.sessions.v1.SessionService``;
            health and reflection report under it.
        register: Adds the servicer to the server (typically a generated
            ``add_XServicer_to_server`` bound to the servicer).
    """

    name: str
    register: Callable[[grpc.aio.Server], None]


@dataclass
class Component:
    """A unit of a process: some gRPC services plus lifecycle hooks.

    Attributes:
        name: Short name ("sessions", "memory", ...), used in logs.
        services: The services it serves.
        on_start: Awaited before the server accepts calls (open pools, run migrations).
        on_stop: Awaited after the server stopped serving (close pools); runs only if
            ``on_start`` completed.
        health_checks: Dependency name ("postgres", "nats") to a check that raises when the
            dependency does not work; the server reports each name through the Health service.
        tenant_counts: Per-tenant counts of the tables it owns, for the process's metrics.
    """

    name: str
    services: list[ServiceSpec]
    on_start: Callable[[], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None
    health_checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    tenant_counts: Sequence[TenantCountQuery] = ()


class ServerStartError(RuntimeError):
    """The gRPC server could not listen; the message is one line, fit to show an operator."""


class PortInUseError(ServerStartError):
    """The port is taken by another process."""


def default_interceptors(
    *extra: grpc.aio.ServerInterceptor | CallGuard,
) -> list[grpc.aio.ServerInterceptor]:
    """Return the interceptor chain every ContextIQ server uses, outermost first.

    One :class:`RpcInterceptor` does, outermost first: the SERVER span continuing the
    caller's trace (``traceparent``), so everything below (log lines included) runs inside
    it; the log line and metrics of the final status code; the mapping of exceptions to
    statuses; then ``extra``, innermost, so their ``ContextIQError`` s are mapped too.

    Args:
        *extra: Call guards (the auth interceptor) and interceptors to run inside the error
            translation, in order. Leading guards run inside the :class:`RpcInterceptor`
            itself; from the first plain interceptor on, they follow it in the chain.

    Returns:
        A new list to pass as ``GrpcServer(interceptors=...)``.
    """
    # The leading guards run inside the RpcInterceptor; whatever follows the first plain
    # interceptor stays in the chain, in order (AuthInterceptor is both).
    guards: list[CallGuard] = []
    for item in extra:
        if not isinstance(item, CallGuard):
            break
        guards.append(item)
    rest = list(extra[len(guards) :])
    return [RpcInterceptor(guards=guards, cache_handlers=not rest), *rest]


class GrpcServer:
    """A ``grpc.aio`` server hosting some components, with health and reflection.

    Health reports ``""``, every service name and every dependency name; reflection lists
    every service plus Health and reflection itself (``grpcurl list`` works).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        components: Sequence[Component],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        grace_s: float = 10.0,
        max_message_bytes: int = 8 * 1024 * 1024,
        health_check_interval_s: float = 5.0,
        health_check_timeout_s: float = 2.0,
        engine: GrpcEngine = "native",
    ) -> None:
        """Describe the server; nothing is started or bound until :meth:`start`.

        Args:
            host: Interface to listen on.
            port: TCP port; 0 picks a free one (see :attr:`port` after start).
            components: What to serve; ``on_start`` hooks run in this order.
            interceptors: Outermost first; usually :func:`default_interceptors`.
            grace_s: How long in-flight RPCs may run on after :meth:`stop` begins.
            max_message_bytes: Largest request or response message accepted or sent.
            health_check_interval_s: Pause between two rounds of dependency checks.
            health_check_timeout_s: A dependency check taking longer counts as failed.
            engine: Which server implementation serves the port (see the module docstring).

        Raises:
            ValueError: If two components declare the same service or ``engine`` is unknown.
        """
        if engine not in GRPC_ENGINES:
            raise ValueError(
                f"unknown gRPC engine {engine!r}: use one of {', '.join(GRPC_ENGINES)}"
            )
        names = [spec.name for c in components for spec in c.services]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"services registered twice: {', '.join(duplicates)}")
        self._engine: GrpcEngine = engine
        self._host = host
        self._requested_port = port
        self._components = list(components)
        self._interceptors = list(interceptors)
        self._grace_s = grace_s
        self._max_message_bytes = max_message_bytes
        self._service_names = names
        checks: dict[str, list[HealthCheck]] = {}
        for component in self._components:
            for dep, check in component.health_checks.items():
                checks.setdefault(dep, []).append(check)
        self._health = HealthReporter()
        self._checks = DependencyChecks(
            checks,
            reporter=self._health,
            interval_s=health_check_interval_s,
            timeout_s=health_check_timeout_s,
        )
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._started: list[Component] = []
        self._stopping: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port; only after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("GrpcServer.start() has not completed")
        return self._port

    @property
    def engine(self) -> GrpcEngine:
        """Which server implementation serves the port."""
        return self._engine

    @property
    def health_names(self) -> tuple[str, ...]:
        """Every name the Health service reports besides ``""``: services, then dependencies."""
        return (*self._service_names, *self._checks.names)

    async def start(self) -> int:
        """Bind, run the components' ``on_start`` hooks, start serving and report SERVING.

        The port is bound before the hooks run, so a taken port fails fast instead of after
        migrations; calls are accepted only once every hook has completed. If a hook fails,
        the hooks that completed are undone (``on_stop``, reverse order) and the error is
        re-raised.

        Returns:
            The bound port.

        Raises:
            PortInUseError: If ``host:port`` is taken.
            ServerStartError: If the server cannot listen for another reason.
            RuntimeError: If called twice.
        """
        if self._server is not None or self._stopping is not None:
            raise RuntimeError("GrpcServer.start() may be called once")
        server = _server_factory(self._engine)(
            interceptors=self._interceptors,
            options=[
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.max_receive_message_length", self._max_message_bytes),
                # gRPC sets SO_REUSEPORT by default on Linux: a second server on the same port
                # would then bind happily and steal half the connections.
                ("grpc.so_reuseport", 0),
            ],
        )
        self._server = server
        for component in self._components:
            for spec in component.services:
                spec.register(server)
        self._health.register(server)
        reflection.enable_server_reflection(
            [*self._service_names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        try:
            self._port = _bind(server, self._host, self._requested_port)
        except BaseException:
            await server.stop(None)
            self._server = None
            raise
        try:
            for component in self._components:
                if component.on_start is not None:
                    await component.on_start()
                self._started.append(component)
            await server.start()
        except BaseException:
            await server.stop(None)
            await self._run_stop_hooks()
            self._server = self._port = None
            raise
        for name in self._service_names:
            await self._health.set_serving(name, True)
        await self._checks.run_once()
        self._checks.start()
        return self._port

    async def set_serving(self, service_name: str, serving: bool) -> None:
        """Report one health name SERVING or NOT_SERVING (ignored once :meth:`stop` began).

        Args:
            service_name: A service name, a dependency name, or ``""`` for the whole server.
            serving: The new status.
        """
        await self._health.set_serving(service_name, serving)

    async def stop(self) -> None:
        """Stop gracefully; safe to call more than once and from several tasks.

        Every health name turns NOT_SERVING first (so probes and load balancers stop sending
        work), then the server stops accepting calls and gives in-flight ones ``grace_s``
        seconds, then the components' ``on_stop`` hooks run in reverse order.
        """
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(), name="ciq-grpc-stop")
        # Shielded: a caller that is cancelled while waiting must not abort the shutdown.
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        await self._checks.stop()
        await self._health.enter_shutdown()
        if self._server is not None:
            await self._server.stop(self._grace_s)
        await self._run_stop_hooks()

    async def _run_stop_hooks(self) -> None:
        while self._started:
            component = self._started.pop()
            if component.on_stop is None:
                continue
            try:
                await component.on_stop()
            except Exception:
                # Keep going: the remaining components still hold connections to release.
                log.exception("on_stop of component %s failed", component.name)

    async def wait(self) -> None:
        """Return when the server has terminated (after :meth:`stop`)."""
        if self._server is not None:
            await self._server.wait_for_termination()


def _server_factory(engine: GrpcEngine) -> Callable[..., grpc.aio.Server]:
    """``grpc.aio.server`` or the engine's drop-in for it."""
    factory: Callable[..., grpc.aio.Server] = grpc.aio.server
    if engine == "native":
        # Imported on use: a process on the grpcio engine never loads the native library.
        import pygrpc_native.aio

        factory = pygrpc_native.aio.server
    return factory


def _bind(server: grpc.aio.Server, host: str, port: int) -> int:
    # IPv6 literals need brackets in a gRPC target ("[::1]:50051").
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        bound: int = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0  # grpc raises or returns 0 depending on the failure; both mean "no port"
    if bound:
        return bound
    if port and _address_in_use(host.strip("[]"), port):
        raise PortInUseError(
            f"{host}:{port} is already in use: stop the other process or set CONTEXTIQ_GRPC_PORT"
        )
    raise ServerStartError(f"cannot listen on {host}:{port}: check CONTEXTIQ_GRPC_HOST")


def _address_in_use(host: str, port: int) -> bool:
    # grpc does not say why a bind failed; binding a plain socket the same way does.
    try:
        with socket.create_server((host, port)):
            return False
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE


async def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop_event)`` with SIGINT and SIGTERM setting ``stop_event``.

    ``main`` starts its servers, awaits the event, then shuts down. The first signal only sets
    the event; the handlers are then removed, so a second Ctrl-C interrupts at once (the
    default behaviour) when a graceful shutdown hangs.

    Args:
        main: The process body.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        log.info("received %s, shutting down", signum.name)
        stop.set()
        for sig in installed:
            loop.remove_signal_handler(sig)
        installed.clear()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Linux
            continue
        installed.append(sig)
    try:
        await main(stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
