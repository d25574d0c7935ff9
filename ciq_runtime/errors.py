"""Domain exceptions and their ``google.rpc.Status`` form.

Handlers raise these; :class:`ciq_runtime.interceptors.RpcInterceptor` turns them into a
gRPC status whose details carry ``google.rpc.ErrorInfo`` (plus ``BadRequest`` for a bad field
and ``RetryInfo`` when the client should back off). Handlers never call ``context.abort``.
"""

# The class names mirror gRPC's status codes (NotFound for NOT_FOUND), as in google-api-core;
# an "Error" suffix on each would only add noise at every raise site.
# ruff: noqa: N818

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "ERROR_DOMAIN",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ContextIQError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "reason_of",
    "to_status",
]

ERROR_DOMAIN = "contextiq.dev"

# google.rpc.ErrorInfo.reason: UPPER_SNAKE_CASE, at most 63 characters.
_REASON_RE = re.compile(r"[A-Z][A-Z0-9_]{0,61}[A-Z0-9]")


class ContextIQError(Exception):
    """Base of every error a ContextIQ RPC reports on purpose.

    Attributes:
        code: The gRPC status code clients receive.
        reason: ``ErrorInfo.reason``: a stable UPPER_SNAKE identifier clients may branch on.
        message: Developer-facing text sent as the status message.
        metadata: ``ErrorInfo.metadata``: string facts about the error (ids, limits, field).
        field: The request field at fault (INVALID_ARGUMENT); sent as a ``BadRequest``
            field violation and as ``metadata["field"]``.
        retry_after_s: When set, sent as ``RetryInfo.retry_delay``.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: Developer-facing description; never include secrets or other tenants'
                data, it goes to the client verbatim.
            reason: UPPER_SNAKE reason; defaults to the status code's name (``NOT_FOUND``).
            metadata: Extra string facts for ``ErrorInfo.metadata``.
            field: Request field at fault, as a path like ``"session.user_id"``.
            retry_after_s: Seconds the client should wait before retrying.

        Raises:
            ValueError: If ``reason`` is not UPPER_SNAKE_CASE (a programming error).
        """
        super().__init__(message)
        reason = reason or self.code.name
        if not _REASON_RE.fullmatch(reason):
            raise ValueError(f"error reason must be UPPER_SNAKE_CASE, got {reason!r}")
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field = field
        self.retry_after_s = retry_after_s
        if field is not None:
            self.metadata["field"] = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(ContextIQError):
    """The request is malformed; ``field`` names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        message: str,
        *,
        field: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: What is wrong with the field, e.g. "page_size must not be negative".
            field: Path of the field at fault, e.g. ``"page_size"``.
            reason: UPPER_SNAKE reason; ``INVALID_ARGUMENT`` by default.
            metadata: Extra string facts for ``ErrorInfo.metadata``.
        """
        super().__init__(message, reason=reason, metadata=metadata, field=field)


class NotFound(ContextIQError):
    """The resource does not exist (or belongs to another tenant: never say which)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ContextIQError):
    """A resource with that id already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ContextIQError):
    """The system is not in a state the operation needs (e.g. session is closed)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ContextIQError):
    """Concurrency conflict, e.g. an ``etag`` mismatch; the client should re-read and retry."""

    code = grpc.StatusCode.ABORTED


class PermissionDenied(ContextIQError):
    """The caller is authenticated but not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ContextIQError):
    """Missing, invalid, expired or revoked credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ContextIQError):
    """A quota or rate limit was hit; set ``retry_after_s`` when known."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(ContextIQError):
    """The method or option is not implemented."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(ContextIQError):
    """A dependency (database, NATS, another service) cannot be reached; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ContextIQError):
    """The work did not finish in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class OutOfRange(ContextIQError):
    """A value is past the valid range (e.g. a page token beyond the end)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Internal(ContextIQError):
    """A bug or broken invariant on our side."""

    code = grpc.StatusCode.INTERNAL


class Cancelled(ContextIQError):
    """The operation was cancelled, typically by the caller."""

    code = grpc.StatusCode.CANCELLED


class DataLoss(ContextIQError):
    """Unrecoverable data loss or corruption."""

    code = grpc.StatusCode.DATA_LOSS


class Unknown(ContextIQError):
    """An error from elsewhere whose kind is unknown."""

    code = grpc.StatusCode.UNKNOWN


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(exc: ContextIQError) -> status_pb2.Status:
    """Build the ``google.rpc.Status`` that reports ``exc`` to the client.

    Args:
        exc: The domain error.

    Returns:
        A status with the error's code and message, and details: ``ErrorInfo`` always,
        ``BadRequest`` when ``exc.field`` is set, ``RetryInfo`` when ``exc.retry_after_s`` is.
    """
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata
            )
        )
    ]
    if exc.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=exc.message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(max(exc.retry_after_s, 0.0) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=exc.code.value[0], message=exc.message, details=details)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The ``ErrorInfo.reason`` a failed call carries (see :func:`to_status`), or ""."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""
