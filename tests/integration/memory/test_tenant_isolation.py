"""Tenant isolation: tenant B, knowing every id of tenant A, can neither read nor change it.

One table: (rpc, request builder over A's ids, expected code). NOT_FOUND means "exactly as if
it did not exist"; OK rows must return nothing of A's. A's data is checked intact at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import field_mask_pb2

from contextiq.memory.v1 import memory_pb2, memory_service_pb2, memory_service_pb2_grpc
from tests.auth_helpers import bearer
from tests.integration.memory.conftest import MemoryServer, create, search
from tests.integration.memory.test_reindex import wait_done

pb = memory_service_pb2
OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@dataclass
class TenantA:
    """What tenant A owns."""

    tenant: str
    memory: memory_pb2.Memory
    bank_id: str
    operation: str
    scope: dict[str, str]


@dataclass
class Stubs:
    memories: memory_service_pb2_grpc.MemoryServiceStub
    banks: memory_service_pb2_grpc.MemoryBankServiceStub
    ops: operations_pb2_grpc.OperationsStub


Call = Callable[[Stubs, TenantA, Any], Awaitable[Any]]


def _m(a: TenantA) -> str:
    return a.memory.id


MATRIX: list[tuple[str, Call, grpc.StatusCode]] = [
    # memories
    (
        "GetMemory",
        lambda s, a, who: s.memories.GetMemory(pb.GetMemoryRequest(id=_m(a)), metadata=who),
        NOT_FOUND,
    ),
    (
        "UpdateMemory",
        lambda s, a, who: s.memories.UpdateMemory(
            pb.UpdateMemoryRequest(
                memory=memory_pb2.Memory(id=_m(a), fact="hijacked"),
                update_mask=field_mask_pb2.FieldMask(paths=["fact"]),
            ),
            metadata=who,
        ),
        NOT_FOUND,
    ),
    (
        "DeleteMemory",
        lambda s, a, who: s.memories.DeleteMemory(pb.DeleteMemoryRequest(id=_m(a)), metadata=who),
        NOT_FOUND,
    ),
    (
        "ListMemories",
        lambda s, a, who: s.memories.ListMemories(
            pb.ListMemoriesRequest(filter='scope.user_id = "shared-user"'), metadata=who
        ),
        OK,
    ),
    (
        "PurgeMemories",
        lambda s, a, who: s.memories.PurgeMemories(
            pb.PurgeMemoriesRequest(filter="*", force=True), metadata=who
        ),
        OK,
    ),
    (
        "CreateMemory in A's bank",
        lambda s, a, who: s.memories.CreateMemory(
            pb.CreateMemoryRequest(scope=a.scope, fact="x", bank_id=a.bank_id), metadata=who
        ),
        NOT_FOUND,
    ),
    (
        "BatchCreateMemories in A's bank",
        lambda s, a, who: s.memories.BatchCreateMemories(
            pb.BatchCreateMemoriesRequest(
                requests=[pb.CreateMemoryRequest(scope=a.scope, fact="x", bank_id=a.bank_id)]
            ),
            metadata=who,
        ),
        NOT_FOUND,
    ),
    # revisions
    (
        "ListMemoryRevisions",
        lambda s, a, who: s.memories.ListMemoryRevisions(
            pb.ListMemoryRevisionsRequest(memory_id=_m(a)), metadata=who
        ),
        NOT_FOUND,
    ),
    (
        "GetMemoryRevision",
        lambda s, a, who: s.memories.GetMemoryRevision(
            pb.GetMemoryRevisionRequest(memory_id=_m(a), revision_number=1), metadata=who
        ),
        NOT_FOUND,
    ),
    (
        "RollbackMemory",
        lambda s, a, who: s.memories.RollbackMemory(
            pb.RollbackMemoryRequest(id=_m(a), revision_number=1), metadata=who
        ),
        NOT_FOUND,
    ),
    # search
    (
        "SearchMemories",
        lambda s, a, who: s.memories.SearchMemories(
            pb.SearchMemoriesRequest(scope=a.scope, search_query="secret diary"), metadata=who
        ),
        OK,
    ),
    (
        "SearchMemories in A's bank",
        lambda s, a, who: s.memories.SearchMemories(
            pb.SearchMemoriesRequest(scope=a.scope, search_query="secret", bank_id=a.bank_id),
            metadata=who,
        ),
        NOT_FOUND,
    ),
    # banks
    (
        "GetMemoryBank",
        lambda s, a, who: s.banks.GetMemoryBank(
            pb.GetMemoryBankRequest(id=a.bank_id), metadata=who
        ),
        NOT_FOUND,
    ),
    (
        "UpdateMemoryBank",
        lambda s, a, who: s.banks.UpdateMemoryBank(
            pb.UpdateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(id=a.bank_id, display_name="x")
            ),
            metadata=who,
        ),
        NOT_FOUND,
    ),
    (
        "DeleteMemoryBank",
        lambda s, a, who: s.banks.DeleteMemoryBank(
            pb.DeleteMemoryBankRequest(id=a.bank_id, force=True), metadata=who
        ),
        NOT_FOUND,
    ),
    (
        "ListMemoryBanks",
        lambda s, a, who: s.banks.ListMemoryBanks(pb.ListMemoryBanksRequest(), metadata=who),
        OK,
    ),
    (
        "ReindexMemories of A's bank",
        lambda s, a, who: s.memories.ReindexMemories(
            pb.ReindexMemoriesRequest(bank_id=a.bank_id), metadata=who
        ),
        NOT_FOUND,
    ),
    # operations
    (
        "GetOperation",
        lambda s, a, who: s.ops.GetOperation(
            operations_pb2.GetOperationRequest(name=a.operation), metadata=who
        ),
        NOT_FOUND,
    ),
    (
        "ListOperations",
        lambda s, a, who: s.ops.ListOperations(
            operations_pb2.ListOperationsRequest(), metadata=who
        ),
        OK,
    ),
]


def _mentions_a(response: Any, a: TenantA) -> bool:
    text = str(response)
    return a.memory.id in text or "secret diary" in text or a.bank_id in text or a.operation in text


@pytest.fixture(scope="module")
async def tenant_a(memory_server: MemoryServer) -> TenantA:
    tenant = "tenant-a-" + uuid.uuid4().hex[:8]
    who = bearer(tenant)
    async with grpc.aio.insecure_channel(memory_server.address) as channel:
        memories = memory_service_pb2_grpc.MemoryServiceStub(channel)
        banks = memory_service_pb2_grpc.MemoryBankServiceStub(channel)
        ops = operations_pb2_grpc.OperationsStub(channel)
        scope = {"user_id": "shared-user"}
        memory = await create(
            memories, who, "the user keeps a secret diary", scope=scope, request_id="same-key"
        )
        await create(
            memories,
            who,
            "the user keeps a secret diary",
            scope=scope,
            bank_id="",
            request_id="other",
        )
        bank = await banks.CreateMemoryBank(
            pb.CreateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(), memory_bank_id="a-private"
            ),
            metadata=who,
        )
        operation = await memories.ReindexMemories(pb.ReindexMemoriesRequest(), metadata=who)
        await wait_done(ops, who, operation.name)
        return TenantA(
            tenant=tenant, memory=memory, bank_id=bank.id, operation=operation.name, scope=scope
        )


@pytest.mark.parametrize(("rpc", "call", "expected"), MATRIX, ids=[row[0] for row in MATRIX])
async def test_tenant_b_cannot_reach_tenant_a(
    memory_server: MemoryServer, tenant_a: TenantA, rpc: str, call: Call, expected: grpc.StatusCode
) -> None:
    who_b = bearer("tenant-b-" + uuid.uuid4().hex[:8])
    async with grpc.aio.insecure_channel(memory_server.address) as channel:
        stubs = Stubs(
            memory_service_pb2_grpc.MemoryServiceStub(channel),
            memory_service_pb2_grpc.MemoryBankServiceStub(channel),
            operations_pb2_grpc.OperationsStub(channel),
        )
        if expected == OK:
            response = await call(stubs, tenant_a, who_b)
            assert not _mentions_a(response, tenant_a), rpc
            if isinstance(response, pb.PurgeMemoriesResponse):
                assert response.purge_count == 0
        else:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(stubs, tenant_a, who_b)
            assert info.value.code() == expected, rpc
        # Whatever B did, A's data is intact.
        who_a = bearer(tenant_a.tenant)
        fetched = await stubs.memories.GetMemory(
            pb.GetMemoryRequest(id=tenant_a.memory.id), metadata=who_a
        )
        assert fetched == tenant_a.memory
        assert [
            r.memory.id
            for r in await search(stubs.memories, who_a, "secret diary", scope=tenant_a.scope)
        ][:1]
        await stubs.banks.GetMemoryBank(
            pb.GetMemoryBankRequest(id=tenant_a.bank_id), metadata=who_a
        )


async def test_same_request_id_in_another_tenant_creates_its_own_memory(
    memory_server: MemoryServer, tenant_a: TenantA
) -> None:
    async with grpc.aio.insecure_channel(memory_server.address) as channel:
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        mine = await create(
            stub, bearer("tenant-c-" + uuid.uuid4().hex[:8]), "mine", request_id="same-key"
        )
        assert mine.id != tenant_a.memory.id
        assert mine.fact == "mine"
