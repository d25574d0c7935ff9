"""GenerateMemories: validate, then commit the operation and its job in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from google.longrunning import operations_pb2

from contextiq.memory.v1 import generation_pb2
from memory_svc.backend import Backend
from memory_svc.convert import timestamp
from memory_svc.generation import outbox, requests
from memory_svc.generation.states import QUEUED
from memory_svc.operations import OperationStore, to_proto

__all__ = ["KIND", "Acceptor"]

#: ``operations.kind`` of memory generations.
KIND: Final = "generate_memories"


class Acceptor:
    """Accepts GenerateMemories requests."""

    def __init__(
        self,
        backend: Backend,
        *,
        sessions: requests.SessionLookup,
        default_model: str,
        dispatch: Callable[[outbox.Enqueued], None],
        remember: Callable[[Any], None] = lambda _row: None,
    ) -> None:
        """Bind to the service's resources.

        Args:
            backend: Database and banks.
            sessions: SessionService client (session sources).
            default_model: ``CONTEXTIQ_LLM_MODEL``, "" when unset.
            dispatch: Called with the job after each commit, to publish it at once.
            remember: Called with the new operation's row after its commit (the job's first
                progress report then updates it without reading it first).
        """
        self._b = backend
        self._sessions = sessions
        self._default_model = default_model
        self._dispatch = dispatch
        self._remember = remember

    async def generate(
        self, tenant_id: str, request: generation_pb2.GenerateMemoriesRequest, context: Any
    ) -> operations_pb2.Operation:
        """Validate the request, record the operation and its job, return the operation."""
        b = self._b
        if request.request_id:
            async with b.sessions() as session:
                existing = await OperationStore.find_by_request_id(
                    session, tenant_id=tenant_id, request_id=request.request_id
                )
            if existing is not None:
                return existing
        bank = await b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        requests.validate_generate(request, bank, default_model=self._default_model)
        session_message = None
        if request.source_type == "session":
            session_message = await self._sessions.get(
                request.source_reference.strip(), requests.caller_context(context)
            )
        accepted = generation_pb2.GenerateMemoriesRequest()
        accepted.CopyFrom(request)
        accepted.bank_id = bank.id
        accepted.source_reference = request.source_reference.strip()
        scope = requests.resolved_scope(request, session_message, bank)
        accepted.scope.clear()
        accepted.scope.update(scope)
        now = b.clock()
        metadata = generation_pb2.GenerateMemoriesMetadata(
            state=QUEUED,
            created_at=timestamp(now),
            updated_at=timestamp(now),
            source_type=accepted.source_type,
            source_reference=accepted.source_reference,
            scope=scope,
            dry_run=accepted.config.dry_run,
        )
        row, enqueued = await outbox.create_with_job(
            b.sessions,
            tenant_id=tenant_id,
            kind=KIND,
            bank_id=bank.id,
            metadata=metadata,
            request=accepted,
            request_id=request.request_id or None,
            now=now,
            job=lambda name: outbox.job_of(
                operation_name=name, tenant_id=tenant_id, request=accepted, now=now
            ),
        )
        if enqueued is not None:
            self._remember(row)
            self._dispatch(enqueued)
        return to_proto(row)
