"""The one gRPC→HTTP table and the error envelope, for all 17 codes."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import HTTP_STATUS_BY_CODE, GatewayError, error_from_rpc, invalid_argument

# grpc-gateway runtime/errors.go HTTPStatusFromCode.
GRPC_GATEWAY = {
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


def test_table_covers_all_17_codes() -> None:
    assert len(GRPC_GATEWAY) == 17
    assert set(HTTP_STATUS_BY_CODE) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=[c.name for c in grpc.StatusCode])
def test_code_to_status_and_envelope(code: grpc.StatusCode) -> None:
    error = GatewayError(code, "msg")

    assert error.status == GRPC_GATEWAY[code]
    assert error.envelope("t" * 32) == {
        "error": {"code": code.name, "message": "msg", "details": [], "trace_id": "t" * 32}
    }
    response = error.to_response("t" * 32)
    assert response.status_code == GRPC_GATEWAY[code]
    assert response.media_type == "application/json"


def _rpc_error(code: grpc.StatusCode, *details: any_pb2.Any) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0], message="from status", details=details)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details="from details")


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_details_and_retry_after_from_the_trailer() -> None:
    info = error_details_pb2.ErrorInfo(reason="QUOTA", domain="contextiq.dev")
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=1))
    unknown = any_pb2.Any(type_url="type.googleapis.com/not.Known", value=b"\x01")

    error = error_from_rpc(
        _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, _packed(info), _packed(retry), unknown)
    )

    assert error.status == 429
    assert error.message == "from status"
    assert error.headers == {"Retry-After": "2"}
    assert error.details == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "QUOTA",
            "domain": "contextiq.dev",
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "1.000000001s"},
        {"@type": "type.googleapis.com/not.Known", "value": "AQ=="},
    ]


def test_retry_info_is_ignored_on_other_codes() -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=5))

    error = error_from_rpc(_rpc_error(grpc.StatusCode.ABORTED, _packed(retry)))

    assert error.headers == {}


def test_without_trailer_the_grpc_message_is_kept() -> None:
    error = error_from_rpc(
        grpc.aio.AioRpcError(
            grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details="gone"
        )
    )

    assert (error.status, error.message, error.details) == (404, "gone", [])


def test_invalid_argument_names_the_field() -> None:
    error = invalid_argument("bad page_size", field="page_size")

    assert error.details == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [{"field": "page_size", "description": "bad page_size"}],
        }
    ]
