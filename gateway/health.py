"""``/health``: the standard grpc.health.v1 ``Health/Check`` of every component, at once.

A component is a name the upstream's health servicer reports on: each routed service's full
name, plus dependency names (``postgres``, ``nats``, ...) that the service processes register.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import grpc
from grpc_health.v1 import health_pb2

from gateway.upstream import UpstreamPool

_CHECK_PATH: Final = "/grpc.health.v1.Health/Check"
SERVING: Final = "SERVING"
NOT_SERVING: Final = "NOT_SERVING"


class HealthChecker:
    """Asks each component's upstream whether it is serving."""

    def __init__(
        self, *, pool: UpstreamPool, components: Mapping[str, str], timeout_s: float = 2.0
    ) -> None:
        """Creates the checker.

        Args:
            pool: Upstream channels.
            components: Component name → upstream address to ask.
            timeout_s: Deadline of each check.
        """
        self._pool = pool
        self._components = dict(components)
        self._timeout = timeout_s

    async def check(self) -> tuple[bool, dict[str, str]]:
        """Checks every component concurrently.

        Returns:
            Whether all serve, and each component's status: a ServingStatus name, or
            ``SERVICE_UNKNOWN`` / the gRPC code name when the check itself failed.
        """
        names = sorted(self._components)
        statuses = await asyncio.gather(*(self._check_one(name) for name in names))
        report = dict(zip(names, statuses, strict=True))
        return all(status == SERVING for status in statuses), report

    async def _check_one(self, name: str) -> str:
        call = self._pool.generic_unary(
            self._components[name], _CHECK_PATH, health_pb2.HealthCheckResponse.FromString
        )
        try:
            reply = await call(health_pb2.HealthCheckRequest(service=name), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            name_of_code: str = exc.code().name
            return name_of_code
        status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return status
