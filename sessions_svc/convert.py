"""Conversions between protobuf messages and what the database stores.

JSON destined for JSONB columns is checked while it is converted: Postgres JSON cannot hold a
NUL character or a non-finite number, and finding out from the database would mean a failed
write and an INTERNAL error instead of INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf import struct_pb2, timestamp_pb2

from ciq_runtime.errors import InvalidArgument
from contextiq.sessions.v1 import session_pb2

__all__ = [
    "event_from_row",
    "from_timestamp",
    "new_id",
    "parse_etag",
    "session_from_row",
    "struct_to_dict",
    "to_etag",
    "to_struct",
    "to_timestamp",
]

_MAX_SAFE_INT: Final = 2**53
_MS_MASK: Final = (1 << 48) - 1


def new_id() -> uuid.UUID:
    """A time-ordered UUID (version 7, RFC 9562).

    Ids made in the same millisecond sort together, so the unique index on event ids (and the
    sessions' primary key) grows at its right edge instead of being written at random pages.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & _MS_MASK) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value)


def struct_to_dict(struct: struct_pb2.Struct, *, field: str) -> dict[str, Any]:
    """Convert a Struct to plain JSON values, rejecting what Postgres JSON cannot store.

    Args:
        struct: The message.
        field: Request field named in errors.

    Returns:
        The object; integral numbers below 2**53 become ints.

    Raises:
        InvalidArgument: A NUL character in a key or string, or a NaN / infinite number.
    """
    out: dict[str, Any] = {}
    for key, value in struct.fields.items():
        if "\x00" in key:
            raise InvalidArgument(f"{field}: key {key!r} contains a NUL character", field=field)
        out[key] = _value_to_python(value, field)
    return out


def _value_to_python(value: struct_pb2.Value, field: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        if "\x00" in value.string_value:
            raise InvalidArgument(f"{field}: a string contains a NUL character", field=field)
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidArgument(f"{field}: numbers must be finite, got {number}", field=field)
        if number.is_integer() and abs(number) < _MAX_SAFE_INT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, field=field)
    if kind == "list_value":
        return [_value_to_python(item, field) for item in value.list_value.values]
    return None  # null_value, or a Value with no kind set (JSON null)


def to_struct(values: Mapping[str, Any], out: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    """Fill ``out`` (or a new Struct) from a JSON object."""
    struct = struct_pb2.Struct() if out is None else out
    if values:
        struct.update(values)
    return struct


def to_timestamp(
    value: datetime, out: timestamp_pb2.Timestamp | None = None
) -> timestamp_pb2.Timestamp:
    """Fill ``out`` (or a new Timestamp) from an aware datetime."""
    stamp = timestamp_pb2.Timestamp() if out is None else out
    stamp.FromDatetime(value)
    return stamp


def from_timestamp(value: timestamp_pb2.Timestamp, *, field: str) -> datetime:
    """An aware UTC datetime from a Timestamp.

    Raises:
        InvalidArgument: If the timestamp is outside 0001-01-01 .. 9999-12-31.
    """
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"{field} is not a valid timestamp", field=field) from exc


def to_etag(version: int) -> str:
    """The etag of a session at ``version``."""
    return str(version)


def parse_etag(etag: str) -> int | None:
    """The version an etag names; None for an etag this service never issued."""
    return int(etag) if etag.isdigit() and len(etag) < 19 else None


def session_from_row(row: Mapping[str, Any], *, state: Mapping[str, Any]) -> session_pb2.Session:
    """Build a Session (without events) from a ``sessions`` row.

    Args:
        row: The row's columns by name (JSON columns already decoded).
        state: The merged state view to return (see :func:`sessions_svc.state.merged_view`).

    Returns:
        The message.
    """
    session = session_pb2.Session(
        id=str(row["id"]),
        user_id=row["user_id"],
        agent_id=row["agent_id"],
        app_name=row["app_name"],
        scope=row["scope"],
        labels=row["labels"],
        parent_session_id=str(row["parent_session_id"]) if row["parent_session_id"] else "",
        event_count=row["event_count"],
        last_event_id=str(row["last_event_id"]) if row["last_event_id"] else "",
        etag=to_etag(row["version"]),
    )
    to_struct(state, session.state)
    to_struct(row["metadata"], session.metadata)
    to_timestamp(row["created_at"], session.created_at)
    to_timestamp(row["updated_at"], session.updated_at)
    if row["expires_at"] is not None:
        to_timestamp(row["expires_at"], session.expires_at)
    return session


def event_from_row(payload: bytes, *, session_id: str, sequence: int) -> session_pb2.Event:
    """Parse a stored event and give it back its session id and position."""
    event = session_pb2.Event.FromString(payload)
    event.session_id = session_id
    event.sequence = sequence
    return event
