"""Rows to protobuf messages."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from contextiq.memory.v1 import memory_pb2
from memory_svc.validation import struct_of

__all__ = ["etag_of", "memory_from_row", "revision_from_row", "timestamp"]


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of an aware datetime."""
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def etag_of(memory_id: object, version: int) -> str:
    """Opaque etag of a memory version (AIP-154)."""
    return hashlib.sha256(f"{memory_id}:{version}".encode()).hexdigest()[:16]


def memory_from_row(row: Any) -> memory_pb2.Memory:
    """The Memory message of a ``memories`` row (or an as-of snapshot with the same columns)."""
    message = memory_pb2.Memory(
        id=str(row.id),
        scope=row.scope,
        fact=row.fact,
        topic=row.topic,
        confidence=row.confidence,
        source_session_id=row.source_session_id,
        metadata=struct_of(row.metadata),
        revision_count=row.revision_count,
        bank_id=row.bank_id,
        source_event_ids=list(row.source_event_ids),
        etag=etag_of(row.id, row.version),
    )
    message.created_at.FromDatetime(row.created_at)
    message.updated_at.FromDatetime(row.updated_at)
    if row.expires_at is not None:
        message.expires_at.FromDatetime(row.expires_at)
    return message


def revision_from_row(row: Any) -> memory_pb2.MemoryRevision:
    """The MemoryRevision message of a ``memory_revisions`` row."""
    message = memory_pb2.MemoryRevision(
        id=str(row.id),
        memory_id=str(row.memory_id),
        revision_number=row.revision_number,
        fact=row.fact,
        action=row.action,
        source_session_id=row.source_session_id,
        extracted_memories=list(row.extracted_memories),
        topic=row.topic,
        confidence=row.confidence,
        metadata=struct_of(row.metadata),
        source_event_ids=list(row.source_event_ids),
        operation_name=row.operation_name,
        rolled_back_to=row.rolled_back_to,
        reason=row.reason,
    )
    message.created_at.FromDatetime(row.created_at)
    if row.expires_at is not None:
        message.expires_at.FromDatetime(row.expires_at)
    return message
