"""Scopes: up to five non-empty string pairs a memory belongs to, and their canonical forms.

A scope is stored three ways: as JSONB (what clients see and what containment queries use),
as a canonical key (exact match is one equality on an indexed text column, in Postgres and in
the vector index), and as a list of pair tokens in the index payload (inclusive match is "has
every pair token of the query").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from ciq_runtime.errors import InvalidArgument

__all__ = ["MAX_PAIRS", "pair_tokens", "scope_key", "validate_scope"]

MAX_PAIRS: Final = 5
_MAX_KEY: Final = 128
_MAX_VALUE: Final = 512


def validate_scope(
    scope: Mapping[str, str],
    *,
    field: str = "scope",
    allowed_keys: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Check a scope and return it as a plain dict.

    Args:
        scope: The request's scope map.
        field: Request field named in errors.
        allowed_keys: The bank's scope keys; any key when empty.

    Returns:
        The scope.

    Raises:
        InvalidArgument: Empty scope, more than five pairs, an empty or overlong key or
            value, or a key the bank does not allow.
    """
    if not scope:
        raise InvalidArgument(f"{field} must have at least one key/value pair", field=field)
    if len(scope) > MAX_PAIRS:
        raise InvalidArgument(
            f"{field} has {len(scope)} pairs; at most {MAX_PAIRS} are allowed", field=field
        )
    for key, value in scope.items():
        if not key.strip():
            raise InvalidArgument(f"{field} keys must not be empty", field=field)
        if not value.strip():
            raise InvalidArgument(f"{field}.{key} must not be empty", field=field)
        if len(key) > _MAX_KEY or len(value) > _MAX_VALUE:
            raise InvalidArgument(
                f"{field} keys are limited to {_MAX_KEY} and values to {_MAX_VALUE} characters",
                field=field,
            )
        if allowed_keys and key not in allowed_keys:
            raise InvalidArgument(
                f"{field} key {key!r} is not one of the bank's scope keys "
                f"({', '.join(sorted(allowed_keys))})",
                field=field,
            )
    return dict(scope)


def scope_key(scope: Mapping[str, str]) -> str:
    """Canonical text of a scope: equal for equal sets of pairs, whatever their order."""
    return json.dumps(sorted(scope.items()), separators=(",", ":"), ensure_ascii=False)


def pair_tokens(scope: Mapping[str, str]) -> list[str]:
    """One token per pair; JSON so that no key or value can make two pairs collide."""
    return [
        json.dumps([key, value], separators=(",", ":"), ensure_ascii=False)
        for key, value in sorted(scope.items())
    ]
