"""ApplyGeneration: a job's consolidation actions applied in one idempotent transaction.

Keyed by the operation: the first call stores its response in ``generation_results`` in the
same transaction as the memory changes, and every later call (a redelivered job, a retry
after a lost reply) returns that response and changes nothing. Concurrent calls for the same
operation serialise on the operation's row lock.

Nothing is trusted from the caller: every UPDATE / DELETE / NOOP must name a live memory of
the operation's tenant, bank and scope (an id the model invented, another scope's or another
tenant's memory fails the whole call with INVALID_ARGUMENT, nothing applied); the bank and
scope must be the ones the operation was accepted with. Facts are embedded before the
transaction opens, and the vector index is written after the commit, before returning (the
memories are searchable when the call returns; the index repair loop covers a crash between
commit and index write).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2
from sqlalchemy import bindparam, func, insert, select, update

from ciq_runtime.db import transaction
from ciq_runtime.errors import ContextIQError, FailedPrecondition, InvalidArgument, NotFound
from contextiq.memory.v1 import generation_pb2, memory_job_service_pb2
from memory_svc import models, repository, validation
from memory_svc.backend import Backend
from memory_svc.banks import BankConfig
from memory_svc.convert import memory_from_row, timestamp
from memory_svc.generation import watermarks
from memory_svc.generation.accept import KIND
from memory_svc.generation.states import CANCELLED, DONE
from memory_svc.generation.tables import generation_results
from memory_svc.generation.vectors import RecentVectors
from memory_svc.indexing import Upsert, vector_bytes
from memory_svc.operations import OPERATIONS_CHANNEL, OperationStore, pack, parse_name
from memory_svc.scopes import scope_key, validate_scope

__all__ = [
    "Applier",
    "cancelled_status",
    "finish_cancelled",
    "load_operation",
    "load_with_result",
    "metadata_of",
]

m = models.memories
o = models.operations
r = models.memory_revisions
res = generation_results

_ACTIONS: Final = ("CREATE", "UPDATE", "DELETE", "NOOP")
_INSERT_MEMORIES: Final = insert(m).returning(*repository.PUBLIC_COLUMNS)
_INSERT_REVISIONS: Final = insert(r)
# Statements built once (a reused statement keeps its SQL cache key).
_WITH_RESULT: Final = (
    select(o, res.c.response.label("stored_response"))
    .select_from(o.outerjoin(res, res.c.operation_name == o.c.name))
    .where(
        o.c.tenant_id == bindparam("p_tenant_id", type_=o.c.tenant_id.type),
        o.c.name == bindparam("p_name", type_=o.c.name.type),
    )
)
_WITH_RESULT_LOCKED: Final = _WITH_RESULT.with_for_update(of=o)
# The result (the idempotency record), the finished operation and the notification of its
# waiters, in one statement.
_STORED: Final = (
    insert(res)
    .values(
        operation_name=bindparam("p_name", type_=res.c.operation_name.type),
        tenant_id=bindparam("p_tenant_id", type_=res.c.tenant_id.type),
        response=bindparam("p_result", type_=res.c.response.type),
        created_at=bindparam("p_now", type_=res.c.created_at.type),
    )
    .cte("stored")
)
_FINISHED: Final = (
    update(o)
    .where(o.c.name == bindparam("p_name", type_=o.c.name.type))
    .values(
        done=True,
        response=bindparam("p_response", type_=o.c.response.type),
        metadata=bindparam("p_metadata", type_=o.c.metadata.type),
        updated_at=bindparam("p_now", type_=o.c.updated_at.type),
        version=o.c.version + 1,
    )
    .returning(o.c.name)
    .cte("finished")
)
_FINISH: Final = select(func.pg_notify(OPERATIONS_CHANNEL, _FINISHED.c.name)).add_cte(_STORED)
_MAX_ACTIONS: Final = 1_000


def cancelled_status() -> status_pb2.Status:
    """The error of a cancelled operation (AIP-151: code CANCELLED)."""
    return status_pb2.Status(code=code_pb2.CANCELLED, message="the operation was cancelled")


@dataclass(slots=True)
class _Action:
    index: int
    kind: str
    memory_id: uuid.UUID | None
    fact: str
    topic: str
    confidence: float | None
    reason: str
    source_event_ids: list[str]
    vector: Any = None


@dataclass(slots=True)
class _Outcome:
    response: generation_pb2.GenerateMemoriesResponse = field(
        default_factory=generation_pb2.GenerateMemoriesResponse
    )
    upserts: list[Upsert] = field(default_factory=list)
    deletes: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    bank: BankConfig
    scope: dict[str, str]
    actions: list[_Action]
    ttl: timedelta | None


def _check_against(
    row: Any,
    request: memory_job_service_pb2.ApplyGenerationRequest,
    plan: _Plan | None,
    invalid: ContextIQError | None,
) -> None:
    """Refuse an apply to a dry run, a request refused by :meth:`Applier._plan`, or one whose
    bank or scope is not the operation's."""
    name = request.operation_name
    accepted = generation_pb2.GenerateMemoriesRequest.FromString(row.request or b"")
    if accepted.config.dry_run:
        raise FailedPrecondition(
            f"operation {name!r} is a dry run: report its planned actions with "
            'ReportOperationProgress(state "done", response) instead of applying them',
            reason="DRY_RUN",
        )
    if invalid is not None:
        raise invalid
    assert plan is not None
    if plan.bank.id != row.bank_id:
        raise InvalidArgument(
            f"bank_id {plan.bank.id!r} is not the bank of operation {name!r}", field="bank_id"
        )
    if accepted.scope and plan.scope != dict(accepted.scope):
        raise InvalidArgument(
            f"scope is not the scope operation {name!r} was accepted with", field="scope"
        )


async def load_operation(session: Any, *, tenant_id: str, name: str, lock: bool = False) -> Any:
    """The tenant's generation operation row.

    Raises:
        InvalidArgument: No name, or the operation is not a memory generation.
        NotFound: Missing, malformed, or another tenant's.
    """
    if not name:
        raise InvalidArgument("operation_name is required", field="operation_name")
    parse_name(name)
    row = await OperationStore.row(session, tenant_id=tenant_id, name=name, lock=lock)
    if row.kind != KIND:
        raise InvalidArgument(
            f"operation {name!r} is not a memory generation", field="operation_name"
        )
    return row


async def load_with_result(
    session: Any, *, tenant_id: str, name: str, lock: bool = False
) -> tuple[Any, generation_pb2.GenerateMemoriesResponse | None]:
    """The tenant's generation operation row and the response an earlier apply stored, read
    in one query (the operation locked ``FOR UPDATE`` when ``lock``).

    Raises:
        InvalidArgument: No name, or the operation is not a memory generation.
        NotFound: Missing, malformed, or another tenant's.
    """
    if not name:
        raise InvalidArgument("operation_name is required", field="operation_name")
    parse_name(name)
    statement = _WITH_RESULT_LOCKED if lock else _WITH_RESULT
    row = (
        await session.execute(statement, {"p_tenant_id": tenant_id, "p_name": name})
    ).one_or_none()
    if row is None:
        raise NotFound(f"operation {name!r} not found")
    if row.kind != KIND:
        raise InvalidArgument(
            f"operation {name!r} is not a memory generation", field="operation_name"
        )
    stored = (
        None
        if row.stored_response is None
        else generation_pb2.GenerateMemoriesResponse.FromString(row.stored_response)
    )
    return row, stored


def _finished_error(row: Any) -> FailedPrecondition:
    if row.cancel_requested:
        return FailedPrecondition(
            f"operation {row.name!r} was cancelled; nothing was applied",
            reason="OPERATION_CANCELLED",
        )
    return FailedPrecondition(
        f"operation {row.name!r} already finished without applying; nothing was applied",
        reason="OPERATION_FINISHED",
    )


def metadata_of(row: Any) -> generation_pb2.GenerateMemoriesMetadata:
    """The operation's current progress metadata."""
    metadata = generation_pb2.GenerateMemoriesMetadata()
    if row.metadata is not None:
        operation = operations_pb2.Operation()
        operation.metadata.ParseFromString(row.metadata)
        operation.metadata.Unpack(metadata)
    return metadata


def _validate_actions(
    request: memory_job_service_pb2.ApplyGenerationRequest, bank: BankConfig
) -> list[_Action]:
    if len(request.actions) > _MAX_ACTIONS:
        raise InvalidArgument(f"actions is limited to {_MAX_ACTIONS} entries", field="actions")
    facts = request.extracted_facts
    seen: dict[uuid.UUID, int] = {}
    actions = []
    for i, action in enumerate(request.actions):
        prefix = f"actions[{i}]"
        kind = action.action.upper()
        if kind not in _ACTIONS:
            raise InvalidArgument(
                f"{prefix}.action must be one of {', '.join(_ACTIONS)}", field=f"{prefix}.action"
            )
        memory_id = None
        if kind != "CREATE":
            if not action.memory_id:
                raise InvalidArgument(
                    f"{prefix}.memory_id is required for {kind}", field=f"{prefix}.memory_id"
                )
            try:
                memory_id = uuid.UUID(action.memory_id)
            except ValueError:
                # An id the model made up: reject the plan, like any other non-candidate.
                raise InvalidArgument(
                    f"{prefix}.memory_id {action.memory_id[:64]!r} names no memory; nothing "
                    "was applied",
                    field=f"{prefix}.memory_id",
                ) from None
            if memory_id in seen:
                raise InvalidArgument(
                    f"{prefix} acts on memory {action.memory_id} already acted on by "
                    f"actions[{seen[memory_id]}]",
                    field=f"{prefix}.memory_id",
                )
            seen[memory_id] = i
        elif action.memory_id:
            raise InvalidArgument(
                f"{prefix}.memory_id must be empty for CREATE", field=f"{prefix}.memory_id"
            )
        fact = ""
        if kind in ("CREATE", "UPDATE"):
            fact = validation.validate_fact(action.fact, field=f"{prefix}.fact")
        topic = validation.validate_topic(action.topic, bank, field=f"{prefix}.topic")
        confidence = None
        if action.confidence:
            confidence = validation.validate_confidence(
                action.confidence, field=f"{prefix}.confidence"
            )
        for index in action.fact_indexes:
            if not 0 <= index < len(facts):
                raise InvalidArgument(
                    f"{prefix}.fact_indexes names fact {index}; extracted_facts has {len(facts)}",
                    field=f"{prefix}.fact_indexes",
                )
        event_ids = list(action.source_event_ids)
        if not event_ids:
            for index in action.fact_indexes:
                event_ids.extend(e for e in facts[index].source_event_ids if e not in event_ids)
        if any(not e for e in event_ids):
            raise InvalidArgument(
                f"{prefix}.source_event_ids must not contain empty ids",
                field=f"{prefix}.source_event_ids",
            )
        actions.append(
            _Action(
                index=i,
                kind=kind,
                memory_id=memory_id,
                fact=fact,
                topic=topic,
                confidence=confidence,
                reason=action.reason[:2000],
                source_event_ids=event_ids,
            )
        )
    return actions


def _ttl(request: memory_job_service_pb2.ApplyGenerationRequest) -> timedelta | None:
    if not request.config.HasField("ttl"):
        return None
    ttl: timedelta = request.config.ttl.ToTimedelta()
    if ttl <= timedelta(0):
        raise InvalidArgument("config.ttl must be positive", field="config.ttl")
    return ttl


class Applier:
    """Runs ApplyGeneration."""

    def __init__(self, backend: Backend, vectors: RecentVectors | None = None) -> None:
        """Bind to the service's resources (and the job's recently embedded facts)."""
        self._b = backend
        self._vectors = vectors or RecentVectors(backend)

    async def apply(
        self, tenant_id: str, request: memory_job_service_pb2.ApplyGenerationRequest
    ) -> generation_pb2.GenerateMemoriesResponse:
        """Apply a generation's actions once; later calls return the first result."""
        b = self._b
        name = request.operation_name
        if not name:
            raise InvalidArgument("operation_name is required", field="operation_name")
        parse_name(name)
        # The request is checked and its facts embedded before the transaction opens (no lock
        # is held during the model call). A refusal only stands once the transaction shows
        # the operation has no stored result: a retry of an apply that succeeded gets that
        # result, whatever the bank became since.
        plan: _Plan | None = None
        invalid: ContextIQError | None = None
        try:
            plan = await self._plan(tenant_id, request)
        except ContextIQError as exc:
            invalid = exc
        now = b.clock()
        outcome: _Outcome | None = None
        refusal: ContextIQError | None = None
        async with transaction(b.sessions) as session:
            row, stored = await load_with_result(session, tenant_id=tenant_id, name=name, lock=True)
            if stored is None and row.done:
                # A concurrent apply finished while we waited for the lock: the joined result
                # of the locking statement predates its commit, a new statement sees it.
                _, stored = await load_with_result(session, tenant_id=tenant_id, name=name)
            if stored is None and row.done:
                refusal = _finished_error(row)
            elif stored is None and row.cancel_requested:
                await finish_cancelled(session, row, now)
                refusal = _finished_error(row)
            elif stored is None:
                _check_against(row, request, plan, invalid)
                assert plan is not None
                if request.watermark_event_id:
                    await watermarks.advance(
                        session,
                        tenant_id=tenant_id,
                        bank_id=plan.bank.id,
                        session_id=request.source_session_id,
                        scope=plan.scope,
                        expected=request.expected_watermark_event_id,
                        event_id=request.watermark_event_id,
                        operation_name=name,
                        now=now,
                    )
                outcome = await self._write(
                    session,
                    tenant_id,
                    plan.bank,
                    plan.scope,
                    request,
                    plan.actions,
                    ttl=plan.ttl,
                    now=now,
                )
                metadata = metadata_of(row)
                _final_metadata(metadata, outcome.response, request, now)
                await session.execute(
                    _FINISH,
                    {
                        "p_name": name,
                        "p_tenant_id": tenant_id,
                        "p_result": outcome.response.SerializeToString(),
                        "p_response": pack(outcome.response),
                        "p_metadata": pack(metadata),
                        "p_now": now,
                    },
                )
        if refusal is not None:
            raise refusal
        if outcome is None:
            assert stored is not None
            return stored
        await b.sync.apply(upserts=outcome.upserts, deletes=outcome.deletes)
        return outcome.response

    async def _plan(
        self, tenant_id: str, request: memory_job_service_pb2.ApplyGenerationRequest
    ) -> _Plan:
        """Everything of the request checked without the operation, the facts embedded."""
        bank = await self._b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        scope = validate_scope(request.scope, allowed_keys=bank.scope_keys)
        actions = _validate_actions(request, bank)
        if request.watermark_event_id and not request.source_session_id:
            raise InvalidArgument(
                "source_session_id is required with watermark_event_id",
                field="source_session_id",
            )
        ttl = _ttl(request)
        writes = [a for a in actions if a.kind in ("CREATE", "UPDATE")]
        if writes:
            bank.require_indexed()
            vectors = await self._vectors.embed(bank.embedding_model, [a.fact for a in writes])
            for action, vector in zip(writes, vectors, strict=True):
                action.vector = vector
        return _Plan(bank=bank, scope=scope, actions=actions, ttl=ttl)

    async def _write(
        self,
        session: Any,
        tenant_id: str,
        bank: BankConfig,
        scope: dict[str, str],
        request: memory_job_service_pb2.ApplyGenerationRequest,
        actions: Sequence[_Action],
        *,
        ttl: timedelta | None,
        now: datetime,
    ) -> _Outcome:
        targets = await _lock_targets(session, tenant_id, bank, scope, actions, now)
        extracted = [fact.fact for fact in request.extracted_facts]
        revisions = bank.enable_revisions
        outcome = _Outcome()
        response = outcome.response
        response.extracted_facts.extend(request.extracted_facts)
        response.planned_actions.extend(request.actions)
        response.usage.CopyFrom(request.usage)
        name = request.operation_name
        # Every CREATE in one multi-row INSERT; every revision in another.
        created_ids: dict[int, uuid.UUID] = {}
        new_rows = []
        for action in actions:
            if action.kind != "CREATE":
                continue
            expires = ttl or bank.generate_created_ttl
            created_ids[action.index] = uuid.uuid4()
            new_rows.append(
                {
                    "id": created_ids[action.index],
                    "tenant_id": tenant_id,
                    "bank_id": bank.id,
                    "scope": scope,
                    "scope_key": scope_key(scope),
                    "fact": action.fact,
                    "topic": action.topic,
                    "confidence": 1.0 if action.confidence is None else action.confidence,
                    "metadata": {},
                    "source_session_id": request.source_session_id,
                    "source_event_ids": action.source_event_ids,
                    "created_at": now,
                    "updated_at": now,
                    "expires_at": now + expires if expires is not None else None,
                    "version": 1,
                    "revision_count": 1 if revisions else 0,
                    "request_id": None,
                    "deleted_at": None,
                    "embedding": vector_bytes(action.vector),
                    "embedding_model": bank.embedding_model,
                    "index_dirty": True,
                }
            )
        inserted: dict[uuid.UUID, Any] = {}
        if new_rows:
            # Rows as parameters, not as .values([...]): SQLAlchemy caches the compiled form of
            # this statement (it renders it as one multi-row INSERT), never of a multi-VALUES one.
            result = await session.execute(_INSERT_MEMORIES, new_rows)
            inserted = {row.id: row for row in result.all()}
        revision_rows: list[dict[str, Any]] = []
        for action in actions:
            if action.kind == "NOOP":
                response.memories_unchanged += 1
                continue
            if action.kind == "CREATE":
                written = inserted[created_ids[action.index]]
                shown = written
                label = "CREATED"
                response.memories_created += 1
                outcome.upserts.append(Upsert(written, action.vector))
            else:
                assert action.memory_id is not None
                current = targets[action.memory_id]
                count = current.revision_count + (1 if revisions else 0)
                if action.kind == "UPDATE":
                    expires = ttl or bank.generate_updated_ttl
                    update_values: dict[str, Any] = {
                        "fact": action.fact,
                        "topic": action.topic or current.topic,
                        "confidence": current.confidence
                        if action.confidence is None
                        else action.confidence,
                        "source_session_id": request.source_session_id or current.source_session_id,
                        "source_event_ids": list(
                            dict.fromkeys([*current.source_event_ids, *action.source_event_ids])
                        ),
                        "embedding": vector_bytes(action.vector),
                        "embedding_model": bank.embedding_model,
                        "updated_at": now,
                        "revision_count": count,
                    }
                    if expires is not None:
                        update_values["expires_at"] = now + expires
                    label = "UPDATED"
                    response.memories_updated += 1
                else:
                    update_values = {"deleted_at": now, "updated_at": now, "revision_count": count}
                    label = "DELETED"
                    response.memories_deleted += 1
                written = await repository.update_memory(
                    session, tenant_id=tenant_id, memory_id=action.memory_id, values=update_values
                )
                if label == "UPDATED":
                    shown = written
                    outcome.upserts.append(Upsert(written, action.vector))
                else:
                    shown = current
                    outcome.deletes.append(written)
            if revisions:
                revision_rows.append(
                    _revision_values(
                        written,
                        action=label,
                        now=now,
                        operation_name=name,
                        extracted=extracted,
                        reason=action.reason,
                    )
                )
            response.generated_memories.append(
                generation_pb2.GeneratedMemory(
                    memory=memory_from_row(shown),
                    action=label,
                    revision_number=written.revision_count if revisions else 0,
                )
            )
        if revision_rows:
            await session.execute(_INSERT_REVISIONS, revision_rows)
        return outcome


def _revision_values(
    row: Any,
    *,
    action: str,
    now: datetime,
    operation_name: str,
    extracted: list[str],
    reason: str,
) -> dict[str, Any]:
    """The revision numbered ``row.revision_count``, from the memory's state in ``row``."""
    return {
        "id": uuid.uuid4(),
        "tenant_id": row.tenant_id,
        "memory_id": row.id,
        "bank_id": row.bank_id,
        "scope": row.scope,
        "scope_key": row.scope_key,
        "revision_number": row.revision_count,
        "action": action,
        "fact": row.fact,
        "topic": row.topic,
        "confidence": row.confidence,
        "metadata": row.metadata,
        "expires_at": row.expires_at,
        "source_session_id": row.source_session_id,
        "source_event_ids": row.source_event_ids,
        "operation_name": operation_name,
        "extracted_memories": extracted,
        "rolled_back_to": 0,
        "reason": reason,
        "memory_created_at": row.created_at,
        "created_at": now,
    }


async def _lock_targets(
    session: Any,
    tenant_id: str,
    bank: BankConfig,
    scope: dict[str, str],
    actions: Sequence[_Action],
    now: datetime,
) -> dict[uuid.UUID, Any]:
    """Lock the memories the actions name; each must be live in the tenant, bank and scope."""
    wanted = {a.memory_id: a for a in actions if a.memory_id is not None}
    if not wanted:
        return {}
    rows = (
        await session.execute(
            select(*repository.PUBLIC_COLUMNS)
            .where(m.c.tenant_id == tenant_id, m.c.id.in_(list(wanted)))
            .order_by(m.c.id)
            .with_for_update()
        )
    ).all()
    found = {row.id: row for row in rows}
    key = scope_key(scope)
    for memory_id, action in sorted(wanted.items(), key=lambda item: item[1].index):
        row = found.get(memory_id)
        if (
            row is None
            or row.deleted_at is not None
            or (row.expires_at is not None and row.expires_at <= now)
            or row.bank_id != bank.id
            or row.scope_key != key
        ):
            raise InvalidArgument(
                f"actions[{action.index}] names memory {memory_id}, which is not a live memory "
                "of this tenant, bank and scope; nothing was applied",
                field=f"actions[{action.index}].memory_id",
                metadata={"memory_id": str(memory_id)},
            )
    return found


async def finish_cancelled(session: Any, row: Any, now: datetime) -> None:
    """End an operation as CANCELLED (code 1).

    Its job is still published (or already was): the worker reads the finished operation from
    its first progress report and skips it. Dropping an unpublished job instead would save a
    delivery but make "was it delivered?" depend on a race with the relay.
    """
    metadata = metadata_of(row)
    metadata.state = CANCELLED
    metadata.updated_at.CopyFrom(timestamp(now))
    metadata.completed_at.CopyFrom(timestamp(now))
    await OperationStore.update_row(
        session,
        name=row.name,
        values={
            "done": True,
            "cancel_requested": True,
            "error": cancelled_status().SerializeToString(),
            "metadata": pack(metadata),
            "updated_at": now,
        },
    )


def _final_metadata(
    metadata: generation_pb2.GenerateMemoriesMetadata,
    response: generation_pb2.GenerateMemoriesResponse,
    request: memory_job_service_pb2.ApplyGenerationRequest,
    now: datetime,
) -> None:
    metadata.state = DONE
    if request.extracted_facts:
        metadata.extracted_count = len(request.extracted_facts)
    metadata.memories_created = response.memories_created
    metadata.memories_updated = response.memories_updated
    metadata.memories_deleted = response.memories_deleted
    metadata.memories_unchanged = response.memories_unchanged
    if request.HasField("usage"):
        metadata.usage.CopyFrom(request.usage)
    metadata.updated_at.CopyFrom(timestamp(now))
    metadata.completed_at.CopyFrom(timestamp(now))
