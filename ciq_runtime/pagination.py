"""AIP-158 pagination: page sizes with a default and a maximum, and opaque page tokens.

A token carries the position after the last item of the page (the sort key values) and a
fingerprint of the request's filter, order and other list parameters: a token replayed with a
different filter is rejected with INVALID_ARGUMENT instead of silently returning a wrong page.
Tokens are base64url JSON, opaque to clients, and never contain tenant data beyond sort keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ciq_runtime.errors import InvalidArgument

__all__ = ["PageRequest", "encode_page_token", "page_request"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A validated page request.

    Attributes:
        size: Items to return.
        after: Sort key values of the last item of the previous page, or None on page one.
    """

    size: int
    after: list[Any] | None


def _fingerprint(params: Mapping[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def page_request(
    *,
    page_size: int,
    page_token: str,
    params: Mapping[str, Any],
    default_size: int = 50,
    max_size: int = 1000,
) -> PageRequest:
    """Validate ``page_size`` / ``page_token`` of a List request.

    Args:
        page_size: The request's page size; 0 means the default, above the maximum is capped
            (AIP-158), negative is rejected.
        page_token: The request's token, empty on the first page.
        params: Every other parameter that shapes the listing (filter, order_by, parent ids,
            as_of, ...); the token must have been issued for the same values.
        default_size: Page size when none is given.
        max_size: Largest page served.

    Returns:
        The page to serve.

    Raises:
        InvalidArgument: Negative size, malformed token, or a token from another listing.
    """
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    size = min(page_size or default_size, max_size)
    if not page_token:
        return PageRequest(size=size, after=None)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        version, fingerprint, after = payload["v"], payload["f"], payload["a"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("page_token is malformed", field="page_token") from exc
    if version != _VERSION or not isinstance(after, list):
        raise InvalidArgument("page_token is malformed", field="page_token")
    if fingerprint != _fingerprint(params):
        raise InvalidArgument(
            "page_token was issued for a different filter or order: "
            "repeat the first request without page_token",
            field="page_token",
        )
    return PageRequest(size=size, after=after)


def encode_page_token(*, last_sort_key: Sequence[Any], params: Mapping[str, Any]) -> str:
    """Token for the page after the item whose sort key values are ``last_sort_key``.

    Args:
        last_sort_key: JSON-serialisable sort key values of the last item served (e.g. an
            ISO timestamp and an id); datetimes should be given as ISO strings.
        params: The same parameters given to :func:`page_request`.

    Returns:
        The opaque token.
    """
    payload = {"v": _VERSION, "f": _fingerprint(params), "a": list(last_sort_key)}
    raw = json.dumps(payload, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
