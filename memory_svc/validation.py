"""Request validation: every check runs before anything is embedded or written.

Each function turns (part of) a request into plain values or raises
:class:`~ciq_runtime.errors.InvalidArgument` naming the field, so a bad request never causes a
partial write.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from google.protobuf import json_format, struct_pb2

from ciq_runtime.errors import InvalidArgument, NotFound
from contextiq.memory.v1 import memory_pb2, memory_service_pb2
from memory_svc.banks import BankConfig
from memory_svc.scopes import validate_scope

__all__ = [
    "MAX_FACT_CHARS",
    "NewMemory",
    "parse_id",
    "parse_memory_id",
    "validate_create",
    "validate_request_id",
    "validate_top_k",
    "validate_update",
]

MAX_FACT_CHARS: Final = 8_000
_MAX_METADATA_BYTES: Final = 16_384
_MAX_REQUEST_ID: Final = 128
_MAX_EVENT_IDS: Final = 1_000
UPDATABLE: Final = frozenset(
    {"fact", "topic", "confidence", "metadata", "expires_at", "ttl", "source_session_id"}
)


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A validated CreateMemory request."""

    scope: dict[str, str]
    fact: str
    topic: str
    confidence: float
    metadata: dict[str, Any]
    expires_at: datetime | None
    source_session_id: str
    source_event_ids: list[str]
    request_id: str | None


@dataclass(frozen=True, slots=True)
class MemoryChanges:
    """A validated UpdateMemory request: only the fields named in the mask are set."""

    memory_id: uuid.UUID
    fields: frozenset[str]
    fact: str | None = None
    topic: str | None = None
    confidence: float | None = None
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None
    source_session_id: str | None = None


def parse_id(value: str, *, what: str, field: str = "id") -> uuid.UUID:
    """An object id; anything that is not a UUID cannot exist, so it is NOT_FOUND.

    Raises:
        InvalidArgument: The id is empty.
        NotFound: The id is not a UUID.
    """
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value!r} not found") from None


def parse_memory_id(value: str, *, field: str = "id") -> uuid.UUID:
    """A memory id (see :func:`parse_id`)."""
    return parse_id(value, what="memory", field=field)


def validate_request_id(value: str) -> str | None:
    """An idempotency key of bounded length, None when absent."""
    if len(value) > _MAX_REQUEST_ID:
        raise InvalidArgument(
            f"request_id is limited to {_MAX_REQUEST_ID} characters", field="request_id"
        )
    return value or None


def validate_fact(fact: str, *, field: str) -> str:
    """A non-blank fact of bounded length, surrounding whitespace removed."""
    text = fact.strip()
    if not text:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(text) > MAX_FACT_CHARS:
        raise InvalidArgument(f"{field} is limited to {MAX_FACT_CHARS} characters", field=field)
    return text


def validate_topic(topic: str, bank: BankConfig, *, field: str) -> str:
    """A topic known to the bank, or "" for none."""
    if topic and topic not in bank.topic_ids:
        raise InvalidArgument(
            f"topic {topic!r} is not a topic of bank {bank.id!r} "
            f"({', '.join(sorted(bank.topic_ids))})",
            field=field,
        )
    return topic


def validate_confidence(value: float, *, field: str) -> float:
    """A confidence in [0, 1]."""
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{field} must be between 0 and 1", field=field)
    return value


def validate_metadata(value: struct_pb2.Struct, *, field: str) -> dict[str, Any]:
    """Metadata as JSON, bounded in size."""
    data: dict[str, Any] = json_format.MessageToDict(value)
    if len(json.dumps(data)) > _MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{field} is limited to {_MAX_METADATA_BYTES} bytes of JSON", field=field
        )
    return data


def _expiration(message: Any, *, now: datetime, prefix: str) -> datetime | None:
    which = message.WhichOneof("expiration")
    if which == "expires_at":
        expires: datetime = message.expires_at.ToDatetime(tzinfo=now.tzinfo)
        if expires <= now:
            raise InvalidArgument("expires_at must be in the future", field=f"{prefix}expires_at")
        return expires
    if which == "ttl":
        ttl: timedelta = message.ttl.ToTimedelta()
        if ttl <= timedelta(0):
            raise InvalidArgument("ttl must be positive", field=f"{prefix}ttl")
        return now + ttl
    return None


def _event_ids(values: Sequence[str], *, field: str) -> list[str]:
    if len(values) > _MAX_EVENT_IDS:
        raise InvalidArgument(f"{field} is limited to {_MAX_EVENT_IDS} ids", field=field)
    if any(not value for value in values):
        raise InvalidArgument(f"{field} must not contain empty ids", field=field)
    return list(values)


def validate_create(
    request: memory_service_pb2.CreateMemoryRequest, bank: BankConfig, *, now: datetime
) -> NewMemory:
    """Validate a CreateMemory request against its bank.

    Raises:
        InvalidArgument: Naming the first bad field.
    """
    scope = validate_scope(request.scope, allowed_keys=bank.scope_keys)
    fact = validate_fact(request.fact, field="fact")
    topic = validate_topic(request.topic, bank, field="topic")
    confidence = (
        validate_confidence(request.confidence, field="confidence")
        if request.HasField("confidence")
        else 1.0
    )
    metadata = validate_metadata(request.metadata, field="metadata")
    expires_at = _expiration(request, now=now, prefix="")
    if expires_at is None and bank.create_ttl is not None:
        expires_at = now + bank.create_ttl
    request_id = validate_request_id(request.request_id)
    return NewMemory(
        scope=scope,
        fact=fact,
        topic=topic,
        confidence=confidence,
        metadata=metadata,
        expires_at=expires_at,
        source_session_id=request.source_session_id,
        source_event_ids=_event_ids(request.source_event_ids, field="source_event_ids"),
        request_id=request_id,
    )


def _inferred_mask(memory: memory_pb2.Memory) -> set[str]:
    # AIP-134: without a mask, every field set in the body is updated. Proto3 scalars have no
    # presence, so "set" means non-default; clearing a field needs an explicit mask.
    present = {descriptor.name for descriptor, _ in memory.ListFields()}
    return present & UPDATABLE


def validate_update(
    request: memory_service_pb2.UpdateMemoryRequest, bank: BankConfig, *, now: datetime
) -> MemoryChanges:
    """Validate an UpdateMemory request.

    Raises:
        InvalidArgument: Unknown or immutable mask paths, nothing to change, or a bad value.
        NotFound: The memory id is not a UUID.
    """
    memory = request.memory
    memory_id = parse_memory_id(memory.id, field="memory.id")
    paths = set(request.update_mask.paths) if request.HasField("update_mask") else None
    if paths is None:
        paths = _inferred_mask(memory)
    if "*" in paths:
        paths = (
            set(UPDATABLE) - {"ttl"}
            if memory.WhichOneof("expiration") != "ttl"
            else (set(UPDATABLE) - {"expires_at"})
        )
    unknown = sorted(paths - UPDATABLE)
    if unknown:
        raise InvalidArgument(
            f"update_mask: {', '.join(unknown)} cannot be updated "
            f"(updatable: {', '.join(sorted(UPDATABLE))})",
            field="update_mask",
        )
    if not paths:
        raise InvalidArgument("update_mask names no field to update", field="update_mask")
    if {"ttl", "expires_at"} <= paths:
        raise InvalidArgument("update_mask: set either ttl or expires_at", field="update_mask")
    values: dict[str, Any] = {}
    if "fact" in paths:
        values["fact"] = validate_fact(memory.fact, field="memory.fact")
    if "topic" in paths:
        values["topic"] = validate_topic(memory.topic, bank, field="memory.topic")
    if "confidence" in paths:
        values["confidence"] = validate_confidence(memory.confidence, field="memory.confidence")
    if "metadata" in paths:
        values["metadata"] = validate_metadata(memory.metadata, field="memory.metadata")
    if "source_session_id" in paths:
        values["source_session_id"] = memory.source_session_id
    if "ttl" in paths or "expires_at" in paths:
        # An expiration path with no value in the body clears the expiration.
        values["expires_at"] = _expiration(memory, now=now, prefix="memory.")
        paths = (paths - {"ttl"}) | {"expires_at"}
    return MemoryChanges(memory_id=memory_id, fields=frozenset(paths), **values)


def validate_top_k(value: int) -> int:
    """top_k: 10 when unset, 1 to 100."""
    if value == 0:
        return 10
    if not 1 <= value <= 100:
        raise InvalidArgument("top_k must be between 1 and 100", field="top_k")
    return value


def validate_query(text: str) -> str:
    """A non-blank search query of bounded length."""
    query = text.strip()
    if not query:
        raise InvalidArgument("search_query must not be empty", field="search_query")
    if len(query) > MAX_FACT_CHARS:
        raise InvalidArgument(
            f"search_query is limited to {MAX_FACT_CHARS} characters", field="search_query"
        )
    return query


def struct_of(data: Mapping[str, Any]) -> struct_pb2.Struct:
    """A Struct holding ``data``."""
    message = struct_pb2.Struct()
    message.update(dict(data))
    return message
