"""Domain errors and their google.rpc.Status form."""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2

from ciq_runtime import errors
from ciq_runtime.errors import (
    ERROR_DOMAIN,
    ContextIQError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    to_status,
)

EXPECTED_CODES = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unknown: grpc.StatusCode.UNKNOWN,
}


def unpack(status_details: Iterable[any_pb2.Any], cls: type[Message]) -> list[Message]:
    found = []
    for detail in status_details:
        if detail.TypeName() == cls.DESCRIPTOR.full_name:
            message = cls()
            detail.Unpack(message)
            found.append(message)
    return found


@pytest.mark.parametrize(("cls", "code"), list(EXPECTED_CODES.items()))
def test_each_error_carries_its_code_and_default_reason(
    cls: type[ContextIQError], code: grpc.StatusCode
) -> None:
    exc = cls("m", field="f") if cls is InvalidArgument else cls("m")
    assert exc.code is code
    assert exc.reason == code.name
    assert isinstance(exc, ContextIQError)
    status = to_status(exc)
    assert status.code == code.value[0]
    assert code_pb2.Code.Name(status.code) == code.name


def test_error_info_carries_reason_domain_and_metadata() -> None:
    exc = NotFound("session s1 not found", reason="SESSION_NOT_FOUND", metadata={"id": "s1"})
    status = to_status(exc)
    assert status.message == "session s1 not found"
    [info] = unpack(status.details, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "SESSION_NOT_FOUND"
    assert info.domain == ERROR_DOMAIN == "contextiq.dev"
    assert dict(info.metadata) == {"id": "s1"}
    assert unpack(status.details, error_details_pb2.BadRequest) == []
    assert unpack(status.details, error_details_pb2.RetryInfo) == []


def test_invalid_argument_names_the_field_twice() -> None:
    exc = InvalidArgument("page_size must not be negative", field="page_size")
    assert exc.metadata == {"field": "page_size"}
    status = to_status(exc)
    [info] = unpack(status.details, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.metadata["field"] == "page_size"
    [bad_request] = unpack(status.details, error_details_pb2.BadRequest)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    [violation] = bad_request.field_violations
    assert violation.field == "page_size"
    assert violation.description == "page_size must not be negative"


def test_invalid_argument_requires_the_field() -> None:
    with pytest.raises(TypeError):
        InvalidArgument("no field")  # type: ignore[call-arg]


def test_retry_after_becomes_retry_info() -> None:
    status = to_status(ResourceExhausted("slow down", retry_after_s=1.5))
    [retry] = unpack(status.details, error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 1500


@pytest.mark.parametrize("reason", ["not_found", "NOT-FOUND", "X", "_X", "A" * 64])
def test_reason_must_be_upper_snake(reason: str) -> None:
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        NotFound("m", reason=reason)


def test_str_is_the_message() -> None:
    assert str(NotFound("gone")) == "gone"


def test_reason_of_reads_the_error_info_a_status_carries() -> None:
    status = errors.to_status(errors.FailedPrecondition("over", reason="OPERATION_FINISHED"))
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    failed = grpc.aio.AioRpcError(
        grpc.StatusCode.FAILED_PRECONDITION, grpc.aio.Metadata(), trailing, details="over"
    )
    assert errors.reason_of(failed) == "OPERATION_FINISHED"
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    assert errors.reason_of(bare) == ""
