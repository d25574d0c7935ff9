"""GenerateMemories: validating the request and resolving what the job needs.

The whole request is checked before anything is written: source type and its source, bank,
topics, TTL, time range, scope, and that a model is configured when extraction is needed. A
session source is looked up in SessionService with the caller's own credentials (so a
session of another tenant is NOT_FOUND exactly as a missing one), and gives the default scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import grpc

from ciq_runtime import errors, telemetry
from ciq_runtime.errors import FailedPrecondition, InvalidArgument
from contextiq.memory.v1 import generation_pb2
from contextiq.sessions.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc
from memory_svc import validation
from memory_svc.banks import BankConfig
from memory_svc.scopes import validate_scope

__all__ = ["SOURCE_TYPES", "SessionLookup", "model_of", "validate_generate"]

SOURCE_TYPES: Final = ("session", "events", "facts")
_MAX_EVENTS: Final = 10_000
_MAX_FACTS: Final = 1_000
#: Caller metadata forwarded to SessionService: the credential, nothing else.
_FORWARDED: Final = frozenset({"authorization", "x-api-key"})
_DEFAULT_DEADLINE_S: Final = 10.0

_STATUS_ERRORS: Final[dict[grpc.StatusCode, type[errors.ContextIQError]]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
}


def model_of(config: generation_pb2.GenerationConfig, bank: BankConfig, default: str) -> str:
    """The LiteLLM model a generation would use: request, then bank, then the service's."""
    return config.model or bank.message.extraction_model or default


def _validate_facts(facts: Sequence[Any], bank: BankConfig) -> None:
    if not facts:
        raise InvalidArgument('facts must not be empty when source_type is "facts"', field="facts")
    if len(facts) > _MAX_FACTS:
        raise InvalidArgument(f"facts is limited to {_MAX_FACTS} entries", field="facts")
    for i, fact in enumerate(facts):
        validation.validate_fact(fact.fact, field=f"facts[{i}].fact")
        validation.validate_topic(fact.topic, bank, field=f"facts[{i}].topic")
        validation.validate_confidence(fact.confidence, field=f"facts[{i}].confidence")


def validate_generate(
    request: generation_pb2.GenerateMemoriesRequest,
    bank: BankConfig,
    *,
    default_model: str,
) -> None:
    """Check everything of a request that needs no other service.

    Args:
        request: The request (``bank`` already resolved from its ``bank_id``).
        bank: Its bank.
        default_model: ``CONTEXTIQ_LLM_MODEL`` ("" when unset).

    Raises:
        InvalidArgument: Naming the first bad field.
        FailedPrecondition: Extraction is needed and no model is configured.
    """
    source = request.source_type
    if not source:
        raise InvalidArgument(
            "source_type is required: session, events or facts", field="source_type"
        )
    if source not in SOURCE_TYPES:
        raise InvalidArgument(
            f"source_type {source!r} is not one of session, events, facts", field="source_type"
        )
    if source == "session" and not request.source_reference.strip():
        raise InvalidArgument(
            'source_reference (the session id) is required when source_type is "session"',
            field="source_reference",
        )
    if source == "events":
        if not request.events:
            raise InvalidArgument(
                'events must not be empty when source_type is "events"', field="events"
            )
        if len(request.events) > _MAX_EVENTS:
            raise InvalidArgument(f"events is limited to {_MAX_EVENTS} entries", field="events")
    elif request.events:
        raise InvalidArgument('events are only used when source_type is "events"', field="events")
    if source == "facts":
        _validate_facts(request.facts, bank)
    elif request.facts:
        raise InvalidArgument('facts are only used when source_type is "facts"', field="facts")
    if source != "session" and (request.HasField("start_time") or request.HasField("end_time")):
        raise InvalidArgument(
            'start_time and end_time select events of a session source (source_type "session")',
            field="start_time" if request.HasField("start_time") else "end_time",
        )
    if (
        request.HasField("start_time")
        and request.HasField("end_time")
        and request.start_time.ToDatetime() >= request.end_time.ToDatetime()
    ):
        raise InvalidArgument("start_time must be before end_time", field="start_time")
    config = request.config
    for i, topic in enumerate(config.topics):
        if topic not in bank.topic_ids:
            raise InvalidArgument(
                f"topic {topic!r} is not a topic of bank {bank.id!r} "
                f"({', '.join(sorted(bank.topic_ids))})",
                field=f"config.topics[{i}]",
            )
    if config.HasField("ttl") and config.ttl.ToTimedelta() <= timedelta(0):
        raise InvalidArgument("config.ttl must be positive", field="config.ttl")
    if config.only_unprocessed and source != "session":
        raise InvalidArgument(
            'config.only_unprocessed applies to a session source (source_type "session")',
            field="config.only_unprocessed",
        )
    validation.validate_request_id(request.request_id)
    if request.scope:
        validate_scope(request.scope, allowed_keys=bank.scope_keys)
    elif source != "session":
        raise InvalidArgument(
            'scope is required unless source_type is "session" (whose scope is the default)',
            field="scope",
        )
    if source != "facts" and not model_of(config, bank, default_model):
        raise FailedPrecondition(
            f"no model is configured to extract memories from a {source} source: set "
            "CONTEXTIQ_LLM_MODEL on the extraction and memory services (a LiteLLM model "
            f'such as "openai/gpt-4o-mini"), or the extraction_model of bank {bank.id!r} '
            "(UpdateMemoryBank), or config.model in the request; inline facts "
            '(source_type "facts") need no model',
            reason="MODEL_NOT_CONFIGURED",
            metadata={"bank_id": bank.id},
        )


@dataclass(frozen=True, slots=True)
class CallerContext:
    """What of the caller's RPC a downstream call inherits."""

    metadata: tuple[tuple[str, str], ...]
    timeout_s: float


def caller_context(context: Any) -> CallerContext:
    """The credential metadata and remaining deadline of the RPC being served."""
    forwarded = tuple(
        (key, value)
        for key, value in (context.invocation_metadata() or ())
        if key.lower() in _FORWARDED and isinstance(value, str)
    )
    remaining = context.time_remaining()
    timeout = _DEFAULT_DEADLINE_S if remaining is None else max(0.0, float(remaining))
    return CallerContext(metadata=forwarded, timeout_s=min(timeout, _DEFAULT_DEADLINE_S * 6))


class SessionLookup:
    """Reads sessions from SessionService as the caller (one channel per process)."""

    def __init__(self, address: str | None) -> None:
        """Bind to SessionService's address (``CONTEXTIQ_SESSIONS_ADDR``); opened lazily."""
        self._address = address
        self._channel: grpc.aio.Channel | None = None

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def get(self, session_id: str, caller: CallerContext) -> session_pb2.Session:
        """The session (without events), as the caller sees it.

        Raises:
            FailedPrecondition: No SessionService address is configured.
            NotFound: No such session for the caller's tenant.
            Unavailable: SessionService did not answer.
        """
        if not self._address:
            raise FailedPrecondition(
                "generating from a session needs SessionService: set CONTEXTIQ_SESSIONS_ADDR "
                "on the memory service",
                reason="SESSIONS_NOT_CONFIGURED",
            )
        if self._channel is None:
            # Traced: the GetSession call joins the GenerateMemories request's trace.
            self._channel = telemetry.open_channel(self._address)
        stub = session_service_pb2_grpc.SessionServiceStub(self._channel)
        try:
            session: session_pb2.Session = await stub.GetSession(
                session_service_pb2.GetSessionRequest(id=session_id, exclude_events=True),
                metadata=caller.metadata,
                timeout=caller.timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise errors.NotFound(
                    f"session {session_id!r} not found", metadata={"session_id": session_id}
                ) from None
            kind = _STATUS_ERRORS.get(code)
            if kind is not None:
                raise kind(f"SessionService: {error.details()}") from None
            raise errors.Unavailable(
                f"SessionService did not answer ({code.name}): {error.details()}",
                reason="SESSIONS_UNAVAILABLE",
            ) from None
        return session


def resolved_scope(
    request: generation_pb2.GenerateMemoriesRequest,
    session: session_pb2.Session | None,
    bank: BankConfig,
) -> dict[str, str]:
    """The scope of the generated memories: the request's, else the session's, else its user."""
    if request.scope:
        return dict(request.scope)
    assert session is not None  # validate_generate requires a scope for other sources
    if session.scope:
        return validate_scope(session.scope, allowed_keys=bank.scope_keys)
    if not session.user_id:
        raise InvalidArgument(
            f"session {session.id!r} has neither a scope nor a user_id; give a scope",
            field="scope",
        )
    return validate_scope({"user_id": session.user_id}, allowed_keys=bank.scope_keys)
