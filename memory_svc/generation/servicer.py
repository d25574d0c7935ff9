"""MemoryJobService (the worker's internal RPCs) and the generation parts the servicers share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from google.longrunning import operations_pb2

from ciq_runtime.errors import InvalidArgument, PermissionDenied
from ciq_runtime.principal import current_principal
from ciq_runtime.unimplemented import answer_unimplemented
from contextiq.memory.v1 import (
    generation_pb2,
    memory_job_service_pb2,
    memory_job_service_pb2_grpc,
    memory_pb2,
)
from memory_svc.backend import Backend
from memory_svc.generation import watermarks
from memory_svc.generation.accept import Acceptor
from memory_svc.generation.apply import Applier
from memory_svc.generation.lifecycle import Lifecycle, OperationWaiter
from memory_svc.generation.outbox import Relay
from memory_svc.generation.progress import RecentOperations, report_progress
from memory_svc.generation.requests import SessionLookup
from memory_svc.generation.similar import find_similar
from memory_svc.generation.states import CONSOLIDATING, EXTRACTING
from memory_svc.generation.vectors import RecentVectors
from memory_svc.scopes import validate_scope

__all__ = ["Generation", "MemoryJobServicer", "acting_tenant"]

#: The states a job starts in: extracting, or consolidating for inline facts.
_FIRST_STATES: Final = (EXTRACTING, CONSOLIDATING)


@dataclass
class Generation:
    """The generation machinery of one memory process.

    Attributes:
        acceptor: GenerateMemories.
        applier: ApplyGeneration.
        lifecycle: Cancel / wait / delete / watch of operations.
        waiter: Postgres LISTEN loop waking waiters and watchers.
        sessions: SessionService client.
        relay: Outbox relay; None when the process has no NATS_URL (jobs then wait in the
            outbox for a replica that has one).
        vectors: Embeddings of recent facts, shared by FindSimilarMemories and
            ApplyGeneration (a job embeds mostly the same texts for both).
        operations: Rows of running operations as the last progress report left them (the
            next report of the job updates from there without reading the row first).
    """

    acceptor: Acceptor
    applier: Applier
    lifecycle: Lifecycle
    waiter: OperationWaiter
    sessions: SessionLookup
    relay: Relay | None
    vectors: RecentVectors
    operations: RecentOperations = field(default_factory=RecentOperations)


def acting_tenant(tenant_id: str) -> str:
    """The tenant a MemoryJobService request acts for; it must be the caller's own.

    Raises:
        InvalidArgument: No tenant_id.
        PermissionDenied: The caller's credential belongs to another tenant.
    """
    if not tenant_id:
        raise InvalidArgument("tenant_id is required", field="tenant_id")
    if current_principal().tenant_id != tenant_id:
        raise PermissionDenied(
            "tenant_id is not the tenant of this credential: the worker acts for a tenant "
            "with a credential issued to that tenant",
            reason="TENANT_MISMATCH",
        )
    return tenant_id


@answer_unimplemented(
    memory_job_service_pb2.DESCRIPTOR.services_by_name["MemoryJobService"],
    memory_job_service_pb2_grpc.MemoryJobServiceServicer,
)
class MemoryJobServicer(memory_job_service_pb2_grpc.MemoryJobServiceServicer):
    """MemoryJobService: the internal RPCs of the generation worker."""

    def __init__(self, backend: Backend, generation: Generation) -> None:
        """Bind to the service's resources."""
        self._b = backend
        self._g = generation

    async def StartGenerationJob(
        self, request: memory_job_service_pb2.StartGenerationJobRequest, context: Any
    ) -> memory_job_service_pb2.StartGenerationJobResponse:
        """The job's first report, with its bank and its session's watermark."""
        tenant_id = acting_tenant(request.tenant_id)
        if request.state not in _FIRST_STATES:
            raise InvalidArgument(f"state must be one of {', '.join(_FIRST_STATES)}", field="state")
        operation, row = await report_progress(
            self._b,
            tenant_id,
            memory_job_service_pb2.ReportOperationProgressRequest(
                operation_name=request.operation_name,
                tenant_id=tenant_id,
                state=request.state,
                attempt=request.attempt,
            ),
            recent=self._g.operations,
        )
        response = memory_job_service_pb2.StartGenerationJobResponse(operation=operation)
        if operation.done:
            return response
        accepted = generation_pb2.GenerateMemoriesRequest.FromString(row.request or b"")
        bank = await self._b.bank(tenant_id=tenant_id, bank_id=row.bank_id)
        response.bank.CopyFrom(bank.message)
        if accepted.source_type == "session":
            async with self._b.autocommit() as connection:
                response.watermark.CopyFrom(
                    await watermarks.read(
                        connection,
                        tenant_id=tenant_id,
                        bank_id=bank.id,
                        session_id=accepted.source_reference,
                        scope=dict(accepted.scope),
                    )
                )
        return response

    async def GetJobBank(
        self, request: memory_job_service_pb2.GetJobBankRequest, context: Any
    ) -> memory_pb2.MemoryBank:
        """The bank's effective configuration (the default bank when never configured)."""
        tenant_id = acting_tenant(request.tenant_id)
        bank = await self._b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        message = memory_pb2.MemoryBank()
        message.CopyFrom(bank.message)
        return message

    async def FindSimilarMemories(
        self, request: memory_job_service_pb2.FindSimilarMemoriesRequest, context: Any
    ) -> memory_job_service_pb2.FindSimilarMemoriesResponse:
        """Candidates of each new fact in exactly the scope."""
        return await find_similar(
            self._b, acting_tenant(request.tenant_id), request, vectors=self._g.vectors
        )

    async def ApplyGeneration(
        self, request: memory_job_service_pb2.ApplyGenerationRequest, context: Any
    ) -> generation_pb2.GenerateMemoriesResponse:
        """Apply the actions once per operation."""
        return await self._g.applier.apply(acting_tenant(request.tenant_id), request)

    async def GetGenerationWatermark(
        self, request: memory_job_service_pb2.GetGenerationWatermarkRequest, context: Any
    ) -> memory_job_service_pb2.GenerationWatermark:
        """The newest event of the session an applied generation of the scope processed."""
        tenant_id = acting_tenant(request.tenant_id)
        bank = await self._b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        if not request.session_id:
            raise InvalidArgument("session_id is required", field="session_id")
        scope = validate_scope(request.scope, allowed_keys=bank.scope_keys)
        async with self._b.sessions() as session:
            return await watermarks.read(
                session,
                tenant_id=tenant_id,
                bank_id=bank.id,
                session_id=request.session_id,
                scope=scope,
            )

    async def ReportOperationProgress(
        self, request: memory_job_service_pb2.ReportOperationProgressRequest, context: Any
    ) -> operations_pb2.Operation:
        """Record the worker's progress."""
        operation, _ = await report_progress(
            self._b, acting_tenant(request.tenant_id), request, recent=self._g.operations
        )
        return operation
