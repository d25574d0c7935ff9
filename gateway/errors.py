"""The one gRPC→HTTP status table and the one REST error envelope.

Every error the gateway returns, whether raised by an upstream service or by the gateway itself
(bad JSON, unknown route, ...), is rendered as::

    {"error": {"code": "NOT_FOUND", "message": "...", "details": [...], "trace_id": "..."}}

``code`` is the canonical gRPC code name; ``details`` are the ``google.rpc.Status`` details of the
upstream error (``grpc-status-details-bin``) in proto3 JSON with their ``@type``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message

# Imported for its side effect too: it registers ErrorInfo, BadRequest, RetryInfo, ... in the
# default pool so that the details' Any values can be rendered as JSON.
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

_log = logging.getLogger(__name__)

# grpc-gateway's runtime.HTTPStatusFromCode (runtime/errors.go).
HTTP_STATUS_BY_CODE: Final[Mapping[grpc.StatusCode, int]] = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
    }
)

# Codes for which a RetryInfo detail becomes a Retry-After header.
_RETRYABLE: Final = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
_DETAILS_TRAILER: Final = "grpc-status-details-bin"
_RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"
JSON_MEDIA_TYPE: Final = "application/json"


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (500 for a code outside the table)."""
    return HTTP_STATUS_BY_CODE.get(code, 500)


class GatewayError(Exception):
    """An error to answer with the envelope.

    Attributes:
        code: The gRPC code; it names the error and, unless ``status`` is given, sets the status.
        message: Human-readable message.
        details: The details, already in proto3 JSON with ``@type``.
        status: HTTP status overriding the table (405 for a wrong method, as grpc-gateway does).
        headers: Extra response headers (Allow, Retry-After, Grpc-Metadata-*).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] = (),
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)
        self.status = http_status(code) if status is None else status
        self.headers = dict(headers or {})

    def envelope(self, trace_id: str) -> dict[str, Any]:
        """The REST error envelope of this error."""
        return {
            "error": {
                "code": self.code.name,
                "message": self.message,
                "details": self.details,
                "trace_id": trace_id,
            }
        }

    def to_response(self, trace_id: str) -> Response:
        """The JSON response carrying the envelope (the middleware adds ``X-Trace-Id``)."""
        body = json.dumps(self.envelope(trace_id), ensure_ascii=False, separators=(",", ":"))
        return Response(
            body, status_code=self.status, headers=self.headers, media_type=JSON_MEDIA_TYPE
        )


def invalid_argument(message: str, *, field: str | None = None) -> GatewayError:
    """An INVALID_ARGUMENT error, with a google.rpc.BadRequest detail naming the field if known."""
    details: list[Mapping[str, Any]] = []
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(detail_json(error_details_pb2.BadRequest(field_violations=[violation])))
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message, details=details)


def internal_error() -> GatewayError:
    """The generic INTERNAL error answered for an unexpected exception (details stay in the log)."""
    return GatewayError(grpc.StatusCode.INTERNAL, "internal error in the REST gateway")


def detail_json(detail: Message) -> dict[str, Any]:
    """A detail message as proto3 JSON with its ``@type``, as it appears in ``details``."""
    packed = any_pb2.Any()
    packed.Pack(detail)
    return any_json(packed)


def any_json(packed: any_pb2.Any) -> dict[str, Any]:
    """An Any as proto3 JSON; an unknown type keeps its base64 bytes rather than failing."""
    try:
        rendered: dict[str, Any] = json_format.MessageToDict(
            packed, preserving_proto_field_name=True
        )
    except (TypeError, KeyError, json_format.Error):
        return {
            "@type": packed.type_url,
            "value": base64.b64encode(packed.value).decode("ascii"),
        }
    return rendered


def error_from_rpc(error: grpc.aio.AioRpcError) -> GatewayError:
    """Turns a failed upstream call into the error to answer.

    The details come from the ``grpc-status-details-bin`` trailer (a serialized
    google.rpc.Status); a RetryInfo detail on RESOURCE_EXHAUSTED/UNAVAILABLE sets Retry-After.
    """
    code = error.code()
    message = error.details() or ""
    details: list[Mapping[str, Any]] = []
    headers: dict[str, str] = {}
    status = _status_from_trailers(error.trailing_metadata())
    if status is not None:
        message = status.message or message
        for packed in status.details:
            details.append(any_json(packed))
            if code in _RETRYABLE and packed.type_url == _RETRY_INFO_TYPE:
                retry_after = _retry_after_seconds(packed)
                if retry_after is not None:
                    headers["Retry-After"] = str(retry_after)
    return GatewayError(code, message, details=details, headers=headers)


def _status_from_trailers(trailers: Sequence[tuple[str, str | bytes]] | None) -> Any:
    for key, value in trailers or ():
        if key == _DETAILS_TRAILER and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                _log.warning("ignoring an undecodable %s trailer", _DETAILS_TRAILER)
                return None
    return None


def _retry_after_seconds(packed: any_pb2.Any) -> int | None:
    info = error_details_pb2.RetryInfo()
    if not packed.Unpack(info):
        return None
    delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return max(0, math.ceil(float(delay)))
