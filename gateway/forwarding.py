"""What crosses the gateway besides the message: headers → gRPC metadata and back, deadlines.

Forwarded to the service: ``Authorization`` and ``X-API-Key`` (credentials; the services enforce
auth), ``traceparent``/``tracestate``, ``X-Request-Id``, and every ``Grpc-Metadata-<name>``
header as metadata ``<name>`` (grpc-gateway's convention). The call's deadline comes from
``grpc-timeout`` (gRPC's own format, e.g. ``500m``) or ``X-Request-Timeout`` (seconds).

Returned to the client: the service's initial and trailing metadata as ``Grpc-Metadata-<name>``
headers; binary (``-bin``) entries are skipped.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

import grpc

from gateway.errors import GatewayError, invalid_argument

MetadataValue = str | bytes
Metadata = list[tuple[str, MetadataValue]]

_CREDENTIALS: Final = frozenset({"authorization", "x-api-key"})
_FORWARDED: Final = frozenset({*_CREDENTIALS, "x-request-id"})
_METADATA_PREFIX: Final = "grpc-metadata-"
_METADATA_KEY: Final = re.compile(r"^[0-9a-z_.\-]+$")
_GRPC_TIMEOUT: Final = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_SECONDS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@dataclass(slots=True)
class IncomingHeaders:
    """The request headers the gateway acts on, read in one pass."""

    content_type: str | None = None
    accept: str = ""
    traceparent: str | None = None
    tracestate: str | None = None
    grpc_timeout: str | None = None
    request_timeout: str | None = None
    metadata: Metadata = field(default_factory=list)


# Headers read into IncomingHeaders' own fields, by raw (lower-case) name. Other headers that
# are neither forwarded nor Grpc-Metadata-* are skipped without being decoded.
_FIELDS: Final = {
    b"content-type": "content_type",
    b"accept": "accept",
    b"traceparent": "traceparent",
    b"tracestate": "tracestate",
    b"grpc-timeout": "grpc_timeout",
    b"x-request-timeout": "request_timeout",
}
_CREDENTIAL_NAMES: Final = frozenset(name.encode() for name in _CREDENTIALS)
_FORWARDED_NAMES: Final = frozenset(name.encode() for name in _FORWARDED)
_METADATA_PREFIX_BYTES: Final = _METADATA_PREFIX.encode()


def read_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> IncomingHeaders:
    """Reads an ASGI header list (names are lower-case by the ASGI spec).

    Raises:
        GatewayError: INVALID_ARGUMENT when a forwarded header cannot be gRPC metadata.
    """
    found = IncomingHeaders()
    for raw_name, raw_value in raw_headers:
        attribute = _FIELDS.get(raw_name)
        if attribute is not None:
            setattr(found, attribute, raw_value.decode("latin-1"))
        elif raw_name in _FORWARDED_NAMES:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            if raw_name in _CREDENTIAL_NAMES and not _is_ascii_text(value):
                # No valid credential has such characters; say so as an auth failure.
                raise GatewayError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"the {name} header has characters no credential can contain",
                )
            found.metadata.append((name, _ascii(name, value)))
        elif raw_name.startswith(_METADATA_PREFIX_BYTES):
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            key = name[len(_METADATA_PREFIX) :]
            # grpc- names are reserved for gRPC itself; the library would refuse them.
            if key.startswith("grpc-"):
                continue
            if not _METADATA_KEY.match(key):
                raise invalid_argument(f"header {name} does not name valid gRPC metadata")
            found.metadata.append((key, _metadata_value(name, key, value)))
    return found


def call_timeout(headers: IncomingHeaders, default: float | None) -> float | None:
    """The deadline of the upstream call in seconds: grpc-timeout, else X-Request-Timeout.

    Raises:
        GatewayError: INVALID_ARGUMENT for a malformed or non-positive timeout.
    """
    if headers.grpc_timeout is not None:
        found = _GRPC_TIMEOUT.match(headers.grpc_timeout.strip())
        if found is None:
            raise invalid_argument(
                f"grpc-timeout {headers.grpc_timeout!r} is not a gRPC timeout such as 500m or 2S"
            )
        return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    if headers.request_timeout is not None:
        try:
            seconds = float(headers.request_timeout)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise invalid_argument(
                f"X-Request-Timeout {headers.request_timeout!r} is not a positive number of seconds"
            )
        return seconds
    return default


def metadata_to_headers(
    *metadata: Sequence[tuple[str, MetadataValue]] | None,
) -> list[tuple[str, str]]:
    """gRPC metadata as ``Grpc-Metadata-<name>`` response headers, binary entries skipped."""
    headers: list[tuple[str, str]] = []
    for entries in metadata:
        for key, value in entries or ():
            if key.endswith("-bin") or not isinstance(value, str):
                continue
            headers.append((f"Grpc-Metadata-{key}", value))
    return headers


def _is_ascii_text(value: str) -> bool:
    return value.isascii() and value.isprintable()


def _ascii(name: str, value: str) -> str:
    if not _is_ascii_text(value):
        raise invalid_argument(f"header {name} has characters gRPC metadata cannot carry")
    return value


def _metadata_value(header: str, key: str, value: str) -> MetadataValue:
    if not key.endswith("-bin"):
        return _ascii(header, value)
    padded = value.strip() + "=" * (-len(value.strip()) % 4)
    try:
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"header {header} must be base64 (a -bin metadata key)") from None
