"""Protobuf payloads of JetStream messages: decoding and poison detection (no server)."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from nats.aio.msg import Msg

from ciq_runtime.nats import MESSAGE_TYPE_HEADER, MessageDecodeError, decode_proto


def message(data: bytes, headers: dict[str, str] | None = None) -> Msg:
    return Msg(_client=None, subject="jobs.generate", data=data, headers=headers)  # type: ignore[arg-type]


def test_decode_round_trip() -> None:
    sent = error_details_pb2.ErrorInfo(reason="X", domain="d", metadata={"k": "v"})
    headers = {MESSAGE_TYPE_HEADER: "google.rpc.ErrorInfo"}
    got = decode_proto(message(sent.SerializeToString(), headers), error_details_pb2.ErrorInfo)
    assert got == sent


def test_wrong_declared_type_is_poison() -> None:
    headers = {MESSAGE_TYPE_HEADER: "google.protobuf.Duration"}
    with pytest.raises(MessageDecodeError, match=r"is a google\.protobuf\.Duration"):
        decode_proto(message(b"", headers), error_details_pb2.ErrorInfo)


def test_unparseable_bytes_are_poison() -> None:
    with pytest.raises(MessageDecodeError, match=r"not a valid google\.protobuf\.Duration"):
        decode_proto(message(b"\xff\xff\xff"), duration_pb2.Duration)
