"""gRPC health reporting (``grpc.health.v1.Health``) and periodic dependency checks.

Kubernetes' native gRPC probes and the gateway's ``/health`` read these statuses. A name is
reported per proto service (set by the server bootstrap), per dependency ("postgres",
"nats": from the components' health checks), and ``""`` for the process as a whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = ["SERVICE_NAME", "DependencyChecks", "HealthCheck", "HealthReporter"]

log = logging.getLogger(__name__)

#: Fully-qualified name of the health service itself.
SERVICE_NAME: str = health.SERVICE_NAME

#: A dependency check: returns when the dependency works, raises when it does not.
HealthCheck = Callable[[], Awaitable[None]]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Owns the asyncio health servicer of one gRPC server."""

    def __init__(self) -> None:
        """Create the servicer; ``""`` starts as SERVING (the servicer's default)."""
        self._servicer = health.aio.HealthServicer()

    def register(self, server: grpc.aio.Server) -> None:
        """Add the Health service to ``server`` (before it starts).

        Args:
            server: The server to register with.
        """
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def set_serving(self, name: str, serving: bool) -> None:
        """Report ``name`` as SERVING or NOT_SERVING; ignored once shutdown began.

        Args:
            name: A service name, a dependency name or ``""``.
            serving: The new status.
        """
        await self._servicer.set(name, _SERVING if serving else _NOT_SERVING)

    async def enter_shutdown(self) -> None:
        """Report every name NOT_SERVING, for good (later ``set_serving`` calls are ignored)."""
        await self._servicer.enter_graceful_shutdown()


class DependencyChecks:
    """Run the components' dependency checks now and then, and report each name's status.

    Several components may check the same dependency ("postgres" for each service in the
    embedded stack): the name is SERVING only when every check registered under it passes.
    """

    def __init__(
        self,
        checks: Mapping[str, Sequence[HealthCheck]],
        *,
        reporter: HealthReporter,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        """Prepare the checks (nothing runs until :meth:`run_once` or :meth:`start`).

        Args:
            checks: Dependency name to the checks that must all pass.
            reporter: Where statuses are reported.
            interval_s: Pause between two rounds of checks.
            timeout_s: A check that takes longer counts as failed.
        """
        self._checks = {name: list(fns) for name, fns in checks.items()}
        self._reporter = reporter
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._healthy: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The dependency names, sorted."""
        return tuple(sorted(self._checks))

    async def run_once(self) -> None:
        """Run every check once, concurrently, and report the results."""
        names = self.names
        results = await asyncio.gather(*(self._check(name) for name in names))
        for name, healthy in zip(names, results, strict=True):
            if self._healthy.get(name, True) != healthy:
                # Only transitions are logged: a dead database would otherwise log every round.
                if healthy:
                    log.info("dependency %s is healthy again", name, extra={"dependency": name})
                else:
                    log.warning("dependency %s is unhealthy", name, extra={"dependency": name})
            self._healthy[name] = healthy
            await self._reporter.set_serving(name, healthy)

    async def _check(self, name: str) -> bool:
        for check in self._checks[name]:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await check()
            except Exception as exc:  # noqa: BLE001 - any failure of a check means "unhealthy"
                log.debug("health check %s failed: %r", name, exc, extra={"dependency": name})
                return False
        return True

    def start(self) -> None:
        """Start checking every ``interval_s`` in a background task (no-op without checks)."""
        if self._checks and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="ciq-health-checks")

    async def stop(self) -> None:
        """Stop the background task; safe to call when it never started."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                # Swallow the cancellation we caused, not one aimed at our caller.
                if current is not None and current.cancelling():
                    raise

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.run_once()
