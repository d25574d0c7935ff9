"""Prometheus metrics of one gateway app, in a registry of its own (never the global one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# Methods outside this set are counted as "OTHER" so clients cannot grow the label set.
_KNOWN_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Gateway overhead is sub-millisecond; service calls range up to the 30 s default deadline.
_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
UNMATCHED_ROUTE: Final = "(unmatched)"


class GatewayMetrics:
    """Request counter and latency histogram by route template, method and status."""

    def __init__(self, *, extra: Sequence[CollectorRegistry] = ()) -> None:
        """Creates the metrics in a fresh registry.

        Args:
            extra: Registries rendered after this one (the process's own, in ``make run``).
        """
        self.registry = CollectorRegistry(auto_describe=True)
        self._extra = tuple(extra)
        self._requests = Counter(
            "contextiq_gateway_requests",
            "HTTP requests served by the REST gateway.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "contextiq_gateway_request_duration_seconds",
            "Time from request to the end of the response, streams included.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, *, route: str, method: str, status: int, seconds: float) -> None:
        """Records one finished request."""
        children = self._children.get((route, method, status))
        if children is None:
            children = self._children_of(route, method, status)
        children[0].inc()
        children[1].observe(seconds)

    def _children_of(self, route: str, method: str, status: int) -> tuple[Counter, Histogram]:
        # The labelled children are looked up once per label set, not per request (labels()
        # takes a lock and builds a tuple each time). Routes are templates and methods are
        # bounded, so this cache has the size of the label sets themselves.
        label_method = method if method in _KNOWN_METHODS else "OTHER"
        children = (
            self._requests.labels(route, label_method, str(status)),
            self._duration.labels(route, label_method),
        )
        if method in _KNOWN_METHODS:
            self._children[(route, method, status)] = children
        return children

    def render(self) -> bytes:
        """The registry (then the extra ones) in the Prometheus text format."""
        return b"".join(generate_latest(r) for r in (self.registry, *self._extra))
