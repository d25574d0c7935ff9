"""Matching a request's method and raw path to a route.

Routes of one HTTP method are tried most specific first (literal segments before variables,
a template with a ``:verb`` before one without), so ``POST /api/v1/memories/search`` never
reaches ``/api/v1/memories/{id}`` and ``/memories/x:rollback`` reaches the rollback binding.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import grpc

from gateway.errors import GatewayError
from gateway.path_template import PathTemplate, Variable
from gateway.routes import Route

_ENCODED_SLASH: Final = re.compile(r"(?i)%2F")


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A matched route with the decoded path variables by dotted field path."""

    route: Route
    path_values: Mapping[str, str]


class Router:
    """Finds the route of a request; built once from every route."""

    def __init__(self, routes: Iterable[Route]) -> None:
        """Sorts the routes per method by specificity.

        Raises:
            ValueError: Two bindings have the same method and template.
        """
        by_method: dict[str, list[Route]] = defaultdict(list)
        seen: dict[tuple[str, str], str] = {}
        for route in routes:
            binding = route.binding
            key = (binding.http_method, binding.template.source)
            if key in seen:
                raise ValueError(
                    f"{binding.method.full_name} and {seen[key]} both bind "
                    f"{binding.http_method} {binding.template.source}"
                )
            seen[key] = binding.method.full_name
            by_method[binding.http_method].append(route)
        self._by_method: dict[str, tuple[Route, ...]] = {
            method: tuple(sorted(found, key=lambda r: r.binding.template.specificity))
            for method, found in by_method.items()
        }
        # Per method, in the same order: each route with the literal text its template's regex
        # requires at the start of the path, tested first (a startswith is much cheaper than a
        # regex, and most routes fail it).
        self._candidates: dict[str, tuple[tuple[str, PathTemplate, Route], ...]] = {
            method: tuple(
                (_literal_prefix(route.binding.template), route.binding.template, route)
                for route in routes
            )
            for method, routes in self._by_method.items()
        }

    @property
    def routes(self) -> list[Route]:
        """Every route, per method in matching order."""
        return [route for routes in self._by_method.values() for route in routes]

    def match(self, method: str, raw_path: str) -> RouteMatch:
        """Finds the route of a request.

        A path with an encoded slash (``%2F``) that matches nothing is tried again with the
        slashes decoded: OpenAPI clients encode the ``/`` inside values of variables such as
        ``{name=operations/*}``.

        Raises:
            GatewayError: NOT_FOUND (404) when no template matches the path; UNIMPLEMENTED with
                HTTP 405 and an Allow header when templates match it for other methods only.
        """
        found = self._match(method, raw_path)
        if found is not None:
            return found
        allowed = self._allowed(raw_path)
        if not allowed and _ENCODED_SLASH.search(raw_path):
            decoded = _ENCODED_SLASH.sub("/", raw_path)
            found = self._match(method, decoded)
            if found is not None:
                return found
            allowed = self._allowed(decoded)
        if allowed:
            raise GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {method} is not allowed on this path; allowed: {', '.join(allowed)}",
                status=405,
                headers={"Allow": ", ".join(allowed)},
            )
        raise GatewayError(grpc.StatusCode.NOT_FOUND, f"no route for {method} {raw_path}")

    def _match(self, method: str, raw_path: str) -> RouteMatch | None:
        for prefix, template, route in self._candidates.get(method, ()):
            if raw_path.startswith(prefix):
                values = template.match(raw_path)
                if values is not None:
                    return RouteMatch(route=route, path_values=values)
        return None

    def _allowed(self, raw_path: str) -> list[str]:
        return sorted(
            method
            for method, routes in self._by_method.items()
            if any(route.binding.template.match(raw_path) is not None for route in routes)
        )


def _literal_prefix(template: PathTemplate) -> str:
    """The leading literal segments of a template, as the path must start with them."""
    literals: list[str] = []
    for segment in template.segments:
        if isinstance(segment, Variable) or segment in ("*", "**"):
            break
        literals.append(segment)
    return "/" + "/".join(literals) if literals else ""
