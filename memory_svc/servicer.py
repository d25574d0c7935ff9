"""gRPC servicers hosted by the memory service.

Thin by design: each RPC takes the caller's tenant from :func:`current_principal` and hands
the request to the operations of :mod:`memory_svc.memories`, :mod:`memory_svc.search`,
:mod:`memory_svc.bank_ops` or :mod:`memory_svc.reindex`. Errors are domain exceptions; the
error interceptor turns them into statuses.

Memory generation (GenerateMemories, WatchOperation, MemoryJobService and the Operations
methods beyond get / list) lives in :mod:`memory_svc.generation`. RPCs of later issues answer
UNIMPLEMENTED, naming themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.longrunning import operations_pb2, operations_pb2_grpc, operations_proto_pb2
from google.protobuf import empty_pb2

from ciq_runtime.principal import current_principal
from ciq_runtime.unimplemented import answer_unimplemented
from contextiq.memory.v1 import (
    generation_pb2,
    memory_pb2,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from memory_svc.backend import Backend
from memory_svc.bank_ops import BankOps
from memory_svc.generation.servicer import Generation, MemoryJobServicer
from memory_svc.memories import MemoryOps
from memory_svc.operations import OperationStore
from memory_svc.procedural.servicer import ProceduralServicer
from memory_svc.reindex import Reindexer
from memory_svc.search import Searcher

__all__ = [
    "MemoryBankServicer",
    "MemoryJobServicer",
    "MemoryServicer",
    "OperationsServicer",
    "ProceduralServicer",
]


def _tenant() -> str:
    return current_principal().tenant_id


@answer_unimplemented(
    memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"],
    memory_service_pb2_grpc.MemoryServiceServicer,
)
class MemoryServicer(memory_service_pb2_grpc.MemoryServiceServicer):
    """MemoryService: memories, revisions, search and reindex."""

    def __init__(self, backend: Backend, reindexer: Reindexer, generation: Generation) -> None:
        """Bind to the service's resources."""
        self._memories = MemoryOps(backend)
        self._search = Searcher(backend)
        self._reindexer = reindexer
        self._generation = generation

    async def GenerateMemories(
        self, request: generation_pb2.GenerateMemoriesRequest, context: Any
    ) -> operations_pb2.Operation:
        """Accept a generation: the operation and its job commit together; returns at once."""
        return await self._generation.acceptor.generate(_tenant(), request, context)

    async def WatchOperation(
        self, request: memory_service_pb2.WatchOperationRequest, context: Any
    ) -> AsyncIterator[operations_pb2.Operation]:
        """Stream an operation: now, after every change, ending once done."""
        async for operation in self._generation.lifecycle.watch(_tenant(), request.name):
            yield operation

    async def CreateMemory(
        self, request: memory_service_pb2.CreateMemoryRequest, context: Any
    ) -> memory_pb2.Memory:
        """Create a memory directly."""
        return await self._memories.create(_tenant(), request)

    async def BatchCreateMemories(
        self, request: memory_service_pb2.BatchCreateMemoriesRequest, context: Any
    ) -> memory_service_pb2.BatchCreateMemoriesResponse:
        """Create up to 1,000 memories at once, all or none."""
        return await self._memories.batch_create(_tenant(), request)

    async def GetMemory(
        self, request: memory_service_pb2.GetMemoryRequest, context: Any
    ) -> memory_pb2.Memory:
        """Get a memory."""
        return await self._memories.get(_tenant(), request.id)

    async def ListMemories(
        self, request: memory_service_pb2.ListMemoriesRequest, context: Any
    ) -> memory_service_pb2.ListMemoriesResponse:
        """List memories (optionally as of a past time)."""
        return await self._memories.list_memories(_tenant(), request)

    async def SearchMemories(
        self, request: memory_service_pb2.SearchMemoriesRequest, context: Any
    ) -> memory_service_pb2.SearchMemoriesResponse:
        """Hybrid search within a scope."""
        return await self._search.search(_tenant(), request)

    async def UpdateMemory(
        self, request: memory_service_pb2.UpdateMemoryRequest, context: Any
    ) -> memory_pb2.Memory:
        """Update a memory."""
        return await self._memories.update(_tenant(), request)

    async def DeleteMemory(
        self, request: memory_service_pb2.DeleteMemoryRequest, context: Any
    ) -> empty_pb2.Empty:
        """Delete a memory (its revisions stay)."""
        await self._memories.delete(_tenant(), request)
        return empty_pb2.Empty()

    async def ListMemoryRevisions(
        self, request: memory_service_pb2.ListMemoryRevisionsRequest, context: Any
    ) -> memory_service_pb2.ListMemoryRevisionsResponse:
        """List a memory's revisions, newest first."""
        return await self._memories.list_revisions(_tenant(), request)

    async def GetMemoryRevision(
        self, request: memory_service_pb2.GetMemoryRevisionRequest, context: Any
    ) -> memory_pb2.MemoryRevision:
        """Get one revision."""
        return await self._memories.get_revision(_tenant(), request)

    async def RollbackMemory(
        self, request: memory_service_pb2.RollbackMemoryRequest, context: Any
    ) -> memory_pb2.Memory:
        """Restore a revision's content."""
        return await self._memories.rollback(_tenant(), request)

    async def PurgeMemories(
        self, request: memory_service_pb2.PurgeMemoriesRequest, context: Any
    ) -> memory_service_pb2.PurgeMemoriesResponse:
        """Delete (or count, without force) the memories matching a filter."""
        return await self._memories.purge(_tenant(), request)

    async def ReindexMemories(
        self, request: memory_service_pb2.ReindexMemoriesRequest, context: Any
    ) -> operations_pb2.Operation:
        """Start rebuilding a bank's index from Postgres."""
        return await self._reindexer.start(_tenant(), request)


@answer_unimplemented(
    memory_service_pb2.DESCRIPTOR.services_by_name["MemoryBankService"],
    memory_service_pb2_grpc.MemoryBankServiceServicer,
)
class MemoryBankServicer(memory_service_pb2_grpc.MemoryBankServiceServicer):
    """MemoryBankService: per-tenant bank configuration."""

    def __init__(self, backend: Backend) -> None:
        """Bind to the service's resources."""
        self._banks = BankOps(backend)

    async def CreateMemoryBank(
        self, request: memory_service_pb2.CreateMemoryBankRequest, context: Any
    ) -> memory_pb2.MemoryBank:
        """Create a bank."""
        return await self._banks.create(_tenant(), request)

    async def GetMemoryBank(
        self, request: memory_service_pb2.GetMemoryBankRequest, context: Any
    ) -> memory_pb2.MemoryBank:
        """Get a bank ("default" always exists)."""
        return await self._banks.get(_tenant(), request.id)

    async def ListMemoryBanks(
        self, request: memory_service_pb2.ListMemoryBanksRequest, context: Any
    ) -> memory_service_pb2.ListMemoryBanksResponse:
        """List banks."""
        return await self._banks.list_banks(_tenant(), request)

    async def UpdateMemoryBank(
        self, request: memory_service_pb2.UpdateMemoryBankRequest, context: Any
    ) -> memory_pb2.MemoryBank:
        """Update a bank."""
        return await self._banks.update(_tenant(), request)

    async def DeleteMemoryBank(
        self, request: memory_service_pb2.DeleteMemoryBankRequest, context: Any
    ) -> empty_pb2.Empty:
        """Delete a bank."""
        return await self._banks.delete(_tenant(), request)


@answer_unimplemented(
    operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"],
    operations_pb2_grpc.OperationsServicer,
)
class OperationsServicer(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """google.longrunning.Operations over the memory service's operations table."""

    def __init__(self, backend: Backend, generation: Generation) -> None:
        """Bind to the service's resources."""
        self._b = backend
        self._generation = generation

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Any
    ) -> empty_pb2.Empty:
        """Request cancellation of one of the caller's operations."""
        await self._generation.lifecycle.cancel(_tenant(), request.name)
        return empty_pb2.Empty()

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Any
    ) -> empty_pb2.Empty:
        """Delete one of the caller's finished operations."""
        await self._generation.lifecycle.delete(_tenant(), request.name)
        return empty_pb2.Empty()

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Any
    ) -> operations_pb2.Operation:
        """Wait (at most 60 s) for one of the caller's operations to finish."""
        return await self._generation.lifecycle.wait(_tenant(), request, context)

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Any
    ) -> operations_pb2.Operation:
        """Get one of the caller's operations."""
        async with self._b.sessions() as session:
            return await OperationStore.get(session, tenant_id=_tenant(), name=request.name)

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Any
    ) -> operations_pb2.ListOperationsResponse:
        """List the caller's operations, newest first."""
        async with self._b.sessions() as session:
            return await OperationStore.list_operations(
                session, tenant_id=_tenant(), request=request
            )
