"""Headers to gRPC metadata and back, and deadlines."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.forwarding import IncomingHeaders, call_timeout, metadata_to_headers, read_headers


def test_read_headers_forwards_only_what_it_should() -> None:
    headers = read_headers(
        [
            (b"authorization", b"Bearer x"),
            (b"x-api-key", b"k"),
            (b"x-request-id", b"r"),
            (b"grpc-metadata-tenant", b"acme"),
            (b"grpc-metadata-blob-bin", b"AAE"),  # unpadded base64
            (b"grpc-metadata-grpc-status", b"0"),  # reserved: dropped
            (b"cookie", b"c=1"),
            (b"content-type", b"application/json"),
            (b"accept", b"text/event-stream"),
            (b"traceparent", b"tp"),
            (b"grpc-timeout", b"1S"),
        ]
    )

    assert headers.metadata == [
        ("authorization", "Bearer x"),
        ("x-api-key", "k"),
        ("x-request-id", "r"),
        ("tenant", "acme"),
        ("blob-bin", b"\x00\x01"),
    ]
    assert headers.content_type == "application/json"
    assert headers.accept == "text/event-stream"
    assert headers.traceparent == "tp"
    assert headers.grpc_timeout == "1S"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ([(b"authorization", "Bearer é".encode("latin-1"))], 401),
        ([(b"x-api-key", b"k\x01")], 401),
        ([(b"x-request-id", "é".encode("latin-1"))], 400),
        ([(b"grpc-metadata-blob-bin", b"not base64!")], 400),
        ([(b"grpc-metadata-a b", b"x")], 400),
    ],
    ids=["non-ascii-credential", "control-char-key", "non-ascii", "bad-base64", "bad-key"],
)
def test_unforwardable_headers(raw: list[tuple[bytes, bytes]], status: int) -> None:
    with pytest.raises(GatewayError) as raised:
        read_headers(raw)

    assert raised.value.status == status


@pytest.mark.parametrize(
    ("grpc_timeout", "request_timeout", "expected"),
    [
        ("2H", None, 7200.0),
        ("3M", None, 180.0),
        ("1500m", "9", 1.5),
        ("250000u", None, 0.25),
        ("5000000n", None, 0.005),
        (None, "2.5", 2.5),
        (None, None, 30.0),
    ],
)
def test_call_timeout(
    grpc_timeout: str | None, request_timeout: str | None, expected: float
) -> None:
    headers = IncomingHeaders(grpc_timeout=grpc_timeout, request_timeout=request_timeout)

    assert call_timeout(headers, 30.0) == pytest.approx(expected)


def test_streams_have_no_default_deadline() -> None:
    assert call_timeout(IncomingHeaders(), None) is None


@pytest.mark.parametrize(
    ("grpc_timeout", "request_timeout"),
    [("1s", None), ("123456789S", None), (None, "0"), (None, "inf"), (None, "nan"), (None, "x")],
)
def test_bad_timeouts(grpc_timeout: str | None, request_timeout: str | None) -> None:
    with pytest.raises(GatewayError):
        call_timeout(IncomingHeaders(grpc_timeout=grpc_timeout, request_timeout=request_timeout), 1)


def test_metadata_to_headers_skips_binary() -> None:
    assert metadata_to_headers([("a", "1"), ("b-bin", b"\x00")], None, [("c", "3")]) == [
        ("Grpc-Metadata-a", "1"),
        ("Grpc-Metadata-c", "3"),
    ]
