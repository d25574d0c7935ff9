"""Request validation: every check runs before the database is touched.

Each function turns a request into a small typed command for the repository, or raises
:class:`~ciq_runtime.errors.InvalidArgument` naming the exact field path at fault — so bad
input never produces a partial write.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf import struct_pb2

from ciq_runtime.errors import InvalidArgument
from contextiq.sessions.v1 import session_pb2, session_service_pb2
from sessions_svc import state
from sessions_svc.convert import from_timestamp, new_id, parse_etag, struct_to_dict

__all__ = [
    "AUTHORS",
    "DEFAULT_MAX_EVENT_BYTES",
    "MAX_SCOPE_PAIRS",
    "GetOptions",
    "NewEvent",
    "NewSession",
    "SessionPatch",
    "StateUpdate",
    "append_event",
    "create_session",
    "expected_version",
    "get_options",
    "parse_uuid",
    "session_patch",
    "state_update",
]

#: Kinds of event author.
AUTHORS: Final = frozenset({"user", "agent", "tool", "system"})
#: Kinds of agent-to-agent message (seeds §6.3).
A2A_MESSAGE_TYPES: Final = frozenset({"request", "response", "notification"})
DEFAULT_MAX_EVENT_BYTES: Final = 1 << 20
MAX_SCOPE_PAIRS: Final = 5
MAX_LABELS: Final = 64
MAX_NAME_LENGTH: Final = 256
MAX_METADATA_BYTES: Final = 256 * 1024
# Scope and label keys are addressed in filters as `scope.KEY` / `labels.KEY`.
_MAP_KEY_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}")
_UPDATABLE: Final = ("metadata", "labels", "expires_at", "ttl")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class NewSession:
    """A validated CreateSession."""

    session_id: uuid.UUID
    user_id: str
    agent_id: str
    app_name: str
    scope: dict[str, str]
    delta: state.StateDelta
    metadata: dict[str, object]
    labels: dict[str, str]
    parent_session_id: uuid.UUID | None
    expires_at: datetime | None
    ttl: timedelta | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated AppendEvent.

    Attributes:
        session_id: The session appended to.
        event: The event as stored and returned: id and timestamp filled in, ``temp:`` keys
            dropped from its state delta, ``partial`` cleared; ``session_id`` / ``sequence``
            are set once stored.
        event_id: ``event.id`` parsed.
        timestamp: ``event.timestamp`` as a datetime.
        payload: ``event`` serialized (empty for a partial event, which is not stored).
        delta: The event's state delta split by prefix.
        expected_last_event_id: The position the client saw, or None.
        partial: A streaming chunk: answered, not stored.
        client_id: The client chose the id (a retry of it must return the stored event).
    """

    session_id: uuid.UUID
    event: session_pb2.Event
    event_id: uuid.UUID
    timestamp: datetime
    payload: bytes
    delta: state.StateDelta
    expected_last_event_id: uuid.UUID | None
    partial: bool
    client_id: bool


@dataclass(frozen=True, slots=True)
class GetOptions:
    """Which events a GetSession returns.

    Attributes:
        session_id: The session.
        limit: Only the newest N events (0: none); None for all.
        after: Only events with a timestamp strictly after this.
    """

    session_id: uuid.UUID
    limit: int | None
    after: datetime | None


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """A validated UpdateSessionState."""

    session_id: uuid.UUID
    delta: state.StateDelta
    expected_version: int | None


@dataclass(frozen=True, slots=True)
class SessionPatch:
    """A validated UpdateSession: the fields to change and their new values.

    ``expiration`` is only meaningful when ``"expiration"`` is in ``fields``: an absolute
    time, a ttl, or (None, None) to clear the expiration.
    """

    session_id: uuid.UUID
    fields: frozenset[str]
    metadata: dict[str, object]
    labels: dict[str, str]
    expires_at: datetime | None
    ttl: timedelta | None
    expected_version: int | None


def parse_uuid(value: str, *, field: str, what: str = "id") -> uuid.UUID:
    """Parse a UUID request field.

    Raises:
        InvalidArgument: Empty or not a UUID.
    """
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a UUID {what}, got {value[:64]!r}", field=field
        ) from None


def _optional_uuid(value: str, *, field: str) -> uuid.UUID | None:
    return parse_uuid(value, field=field) if value else None


def _name(value: str, *, field: str, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{field} is longer than {MAX_NAME_LENGTH} characters", field=field)
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL character", field=field)
    return value


def _string_map(
    values: Mapping[str, str], *, field: str, max_pairs: int, values_required: bool
) -> dict[str, str]:
    if len(values) > max_pairs:
        raise InvalidArgument(
            f"{field} has {len(values)} entries; at most {max_pairs} are allowed", field=field
        )
    out: dict[str, str] = {}
    for key, value in values.items():
        if not _MAP_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"{field} key {key[:64]!r} is invalid: use 1-63 letters, digits, '_', '-' "
                "or '.', not starting with '-' or '.'",
                field=field,
            )
        if values_required and not value:
            raise InvalidArgument(f"{field} value of {key!r} must not be empty", field=field)
        if len(value) > MAX_NAME_LENGTH or "\x00" in value:
            raise InvalidArgument(
                f"{field} value of {key!r} must be at most {MAX_NAME_LENGTH} characters "
                "without NUL",
                field=field,
            )
        out[key] = value
    return out


def _scope(values: Mapping[str, str]) -> dict[str, str]:
    return _string_map(values, field="scope", max_pairs=MAX_SCOPE_PAIRS, values_required=True)


def _labels(values: Mapping[str, str], *, field: str) -> dict[str, str]:
    return _string_map(values, field=field, max_pairs=MAX_LABELS, values_required=False)


def _metadata(struct: struct_pb2.Struct, *, field: str) -> dict[str, object]:
    if struct.ByteSize() > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{field} is larger than {MAX_METADATA_BYTES} bytes", field=field)
    return struct_to_dict(struct, field=field)


def _future(when: datetime, *, field: str) -> datetime:
    if when <= datetime.now(UTC):
        raise InvalidArgument(f"{field} must be in the future", field=field)
    return when


def _ttl(value: timedelta, *, field: str) -> timedelta:
    if value <= timedelta(0):
        raise InvalidArgument(f"{field} must be positive", field=field)
    if value > timedelta(days=365 * 100):
        raise InvalidArgument(f"{field} must be at most 100 years", field=field)
    return value


def expected_version(etag: str) -> int | None:
    """The version an etag asks for: None when empty, -1 (matches nothing) when foreign."""
    if not etag:
        return None
    version = parse_etag(etag)
    return -1 if version is None else version


def create_session(request: session_service_pb2.CreateSessionRequest) -> NewSession:
    """Validate a CreateSession request."""
    user_id = _name(request.user_id, field="user_id", required=True)
    agent_id = _name(request.agent_id, field="agent_id")
    app_name = _name(request.app_name, field="app_name")
    scope = _scope(request.scope)
    delta = state.split_delta(struct_to_dict(request.state, field="state"), field="state")
    metadata = _metadata(request.metadata, field="metadata")
    labels = _labels(request.labels, field="labels")
    parent = _optional_uuid(request.parent_session_id, field="parent_session_id")
    expires_at: datetime | None = None
    ttl: timedelta | None = None
    expiration = request.WhichOneof("expiration")
    if expiration == "expires_at":
        expires_at = _future(
            from_timestamp(request.expires_at, field="expires_at"), field="expires_at"
        )
    elif expiration == "ttl":
        ttl = _ttl(request.ttl.ToTimedelta(), field="ttl")
    request_id = _name(request.request_id, field="request_id") or None
    session_id = (
        parse_uuid(request.session_id, field="session_id") if request.session_id else new_id()
    )
    return NewSession(
        session_id=session_id,
        user_id=user_id,
        agent_id=agent_id,
        app_name=app_name,
        scope=scope,
        delta=delta,
        metadata=metadata,
        labels=labels,
        parent_session_id=parent,
        expires_at=expires_at,
        ttl=ttl,
        request_id=request_id,
    )


def get_options(request: session_service_pb2.GetSessionRequest) -> GetOptions:
    """Validate a GetSession request."""
    session_id = parse_uuid(request.id, field="id")
    limit: int | None = None
    if request.exclude_events:
        limit = 0
    elif request.HasField("num_recent_events"):
        if request.num_recent_events < 0:
            raise InvalidArgument(
                "num_recent_events must not be negative", field="num_recent_events"
            )
        limit = request.num_recent_events
    after = (
        from_timestamp(request.events_after, field="events_after")
        if request.HasField("events_after")
        else None
    )
    return GetOptions(session_id=session_id, limit=limit, after=after)


def _check_event(event: session_pb2.Event) -> datetime | None:
    """Field checks of an event; raise on the first bad field.

    Returns:
        The event's timestamp, if it has one.
    """
    if event.author not in AUTHORS:
        raise InvalidArgument(
            f"event.author must be one of {', '.join(sorted(AUTHORS))}, got {event.author[:64]!r}",
            field="event.author",
        )
    _name(event.agent_name, field="event.agent_name")
    _name(event.invocation_id, field="event.invocation_id")
    _name(event.branch, field="event.branch")
    timestamp = (
        from_timestamp(event.timestamp, field="event.timestamp")
        if event.HasField("timestamp")
        else None
    )
    for i, part in enumerate(event.content.parts):
        kind = part.WhichOneof("data")
        where = f"event.content.parts[{i}]"
        if kind == "function_call" and not part.function_call.name:
            raise InvalidArgument(
                f"{where}.function_call.name is required", field=f"{where}.function_call.name"
            )
        if kind == "function_response" and not part.function_response.name:
            raise InvalidArgument(
                f"{where}.function_response.name is required",
                field=f"{where}.function_response.name",
            )
        if kind == "inline_data" and not part.inline_data.mime_type:
            raise InvalidArgument(
                f"{where}.inline_data.mime_type is required",
                field=f"{where}.inline_data.mime_type",
            )
        if kind == "file_data" and not part.file_data.file_uri:
            raise InvalidArgument(
                f"{where}.file_data.file_uri is required", field=f"{where}.file_data.file_uri"
            )
    actions = event.actions
    for i, call in enumerate(actions.tool_calls):
        if not call.name:
            field = f"event.actions.tool_calls[{i}].name"
            raise InvalidArgument(f"{field} is required", field=field)
    for i, output in enumerate(actions.tool_outputs):
        if not output.name:
            field = f"event.actions.tool_outputs[{i}].name"
            raise InvalidArgument(f"{field} is required", field=field)
    if event.HasField("a2a_message"):
        message = event.a2a_message
        if message.message_type not in A2A_MESSAGE_TYPES:
            raise InvalidArgument(
                "event.a2a_message.message_type must be one of "
                f"{', '.join(sorted(A2A_MESSAGE_TYPES))}, got {message.message_type[:64]!r}",
                field="event.a2a_message.message_type",
            )
        _name(message.from_agent_id, field="event.a2a_message.from_agent_id", required=True)
        _name(message.to_agent_id, field="event.a2a_message.to_agent_id", required=True)
        if message.in_reply_to:
            parse_uuid(message.in_reply_to, field="event.a2a_message.in_reply_to", what="event id")
    return timestamp


def append_event(
    request: session_service_pb2.AppendEventRequest, *, max_event_bytes: int
) -> NewEvent:
    """Validate an AppendEvent request and prepare the event for storage.

    The request's event is modified in place (it becomes the stored event).

    Args:
        request: The request.
        max_event_bytes: Largest serialized event accepted.

    Returns:
        The command.
    """
    session_id = parse_uuid(request.session_id, field="session_id")
    if not request.HasField("event"):
        raise InvalidArgument("event is required", field="event")
    event = request.event
    size = event.ByteSize()
    if size > max_event_bytes:
        raise InvalidArgument(
            f"event is {size} bytes; the limit is {max_event_bytes} bytes",
            field="event",
            metadata={"limit_bytes": str(max_event_bytes), "size_bytes": str(size)},
        )
    timestamp = _check_event(event)
    expected = _optional_uuid(request.expected_last_event_id, field="expected_last_event_id")
    client_id = bool(event.id)
    event_id = parse_uuid(event.id, field="event.id") if client_id else new_id()
    if timestamp is None:
        # Now, at the microsecond precision Postgres keeps, without the datetime round trip
        # of Timestamp.FromDatetime (this runs on every append).
        micros = time.time_ns() // 1000
        seconds, fraction = divmod(micros, 1_000_000)
        event.timestamp.seconds = seconds
        event.timestamp.nanos = fraction * 1000
        timestamp = _EPOCH + timedelta(microseconds=micros)
    delta = state.StateDelta()
    actions = event.actions
    if event.HasField("actions") and actions.HasField("state_delta"):
        field = "event.actions.state_delta"
        values = struct_to_dict(actions.state_delta, field=field)
        delta = state.split_delta(values, field=field)
        for key in values:
            if key.startswith(state.TEMP_PREFIX):
                del actions.state_delta.fields[key]
    event.id = str(event_id)
    # Output-only fields a client may have echoed back are the server's to set.
    event.session_id = ""
    event.sequence = 0
    partial = event.partial
    event.partial = False
    return NewEvent(
        session_id=session_id,
        event=event,
        event_id=event_id,
        timestamp=timestamp,
        payload=b"" if partial else event.SerializeToString(),
        delta=delta,
        expected_last_event_id=expected,
        partial=partial,
        client_id=client_id,
    )


def state_update(request: session_service_pb2.UpdateSessionStateRequest) -> StateUpdate:
    """Validate an UpdateSessionState request.

    Keys in the mask but absent from ``state`` are deleted (AIP-134); without a mask every
    key present in ``state`` changes.
    """
    session_id = parse_uuid(request.session_id, field="session_id")
    values = struct_to_dict(request.state, field="state")
    if request.update_mask.paths:
        keys = state.keys_from_mask(request.update_mask.paths, field="update_mask")
        selected = {key: values.get(key) for key in keys}
    else:
        selected = values
    return StateUpdate(
        session_id=session_id,
        delta=state.split_delta(selected, field="state"),
        expected_version=expected_version(request.etag),
    )


def session_patch(request: session_service_pb2.UpdateSessionRequest) -> SessionPatch:
    """Validate an UpdateSession request (metadata, labels and expiration are mutable)."""
    session = request.session
    session_id = parse_uuid(session.id, field="session.id")
    expiration = session.WhichOneof("expiration")
    if request.update_mask.paths:
        fields: set[str] = set()
        for path in request.update_mask.paths:
            if path == "*":
                fields.update(_UPDATABLE)
            elif path in _UPDATABLE:
                fields.add(path)
            else:
                raise InvalidArgument(
                    f"update_mask: {path!r} cannot be updated; updatable fields: "
                    + ", ".join(_UPDATABLE),
                    field="update_mask",
                )
    else:
        fields = set()
        if session.HasField("metadata"):
            fields.add("metadata")
        if session.labels:
            fields.add("labels")
        if expiration is not None:
            fields.add(expiration)
    if not fields:
        raise InvalidArgument(
            "nothing to update: set metadata, labels, expires_at or ttl, or an update_mask",
            field="update_mask",
        )
    expires_at: datetime | None = None
    ttl: timedelta | None = None
    if fields & {"expires_at", "ttl"}:
        fields -= {"expires_at", "ttl"}
        fields.add("expiration")
        if expiration == "expires_at":
            expires_at = _future(
                from_timestamp(session.expires_at, field="session.expires_at"),
                field="session.expires_at",
            )
        elif expiration == "ttl":
            ttl = _ttl(session.ttl.ToTimedelta(), field="session.ttl")
    return SessionPatch(
        session_id=session_id,
        fields=frozenset(fields),
        metadata=_metadata(session.metadata, field="session.metadata")
        if "metadata" in fields
        else {},
        labels=_labels(session.labels, field="session.labels") if "labels" in fields else {},
        expires_at=expires_at,
        ttl=ttl,
        expected_version=expected_version(request.etag),
    )
