"""Tenant matrix for generation operations: tenant B never sees, waits on, watches, cancels or
deletes tenant A's operations, over gRPC and REST (its progress stream included)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import httpx
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from tests.auth_helpers import bearer, bearer_headers
from tests.integration.memory.generation.conftest import GenServer, facts_request, unpack_metadata
from tests.tenant_matrix import LEAK, Case, Metadata

TENANT_A = f"gen-a-{uuid.uuid4().hex[:8]}"


def _ops(channel: grpc.aio.Channel) -> operations_pb2_grpc.OperationsStub:
    return operations_pb2_grpc.OperationsStub(channel)


async def _get(channel: grpc.aio.Channel, name: str, md: Metadata) -> Any:
    return await _ops(channel).GetOperation(
        operations_pb2.GetOperationRequest(name=name), metadata=md
    )


async def _list(channel: grpc.aio.Channel, name: str, md: Metadata) -> Any:
    return await _ops(channel).ListOperations(
        operations_pb2.ListOperationsRequest(page_size=1000), metadata=md
    )


async def _cancel(channel: grpc.aio.Channel, name: str, md: Metadata) -> Any:
    return await _ops(channel).CancelOperation(
        operations_pb2.CancelOperationRequest(name=name), metadata=md
    )


async def _wait(channel: grpc.aio.Channel, name: str, md: Metadata) -> Any:
    return await _ops(channel).WaitOperation(
        operations_pb2.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(seconds=1)),
        metadata=md,
    )


async def _delete(channel: grpc.aio.Channel, name: str, md: Metadata) -> Any:
    return await _ops(channel).DeleteOperation(
        operations_pb2.DeleteOperationRequest(name=name), metadata=md
    )


async def _watch(channel: grpc.aio.Channel, name: str, md: Metadata) -> Any:
    stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
    return [
        update
        async for update in stub.WatchOperation(
            memory_service_pb2.WatchOperationRequest(name=name), metadata=md
        )
    ]


CASES = [
    Case("operation", "get", _get, lambda n: ("GET", f"/v1/{n}", None)),
    Case(
        "operation",
        "list",
        _list,
        lambda n: ("GET", "/v1/operations?page_size=1000", None),
        kind=LEAK,
    ),
    Case("operation", "cancel", _cancel, lambda n: ("POST", f"/v1/{n}:cancel", {})),
    Case("operation", "wait", _wait),
    Case("operation", "delete", _delete, lambda n: ("DELETE", f"/v1/{n}", None)),
    Case("operation", "watch", _watch, lambda n: ("GET", f"/api/v1/{n}:watch", None)),
]


@pytest.fixture(scope="module")
async def foreign_operation(gen_server: GenServer) -> str:
    async with grpc.aio.insecure_channel(gen_server.address) as channel:
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        operation = await stub.GenerateMemories(
            facts_request({"user_id": "u1"}, "A's private fact."), metadata=bearer(TENANT_A)
        )
    return str(operation.name)


@pytest.mark.parametrize("case", CASES, ids=Case.name)
async def test_grpc(case: Case, gen_channel: grpc.aio.Channel, foreign_operation: str) -> None:
    await case.check_grpc(gen_channel, foreign_operation, bearer(f"gen-b-{uuid.uuid4().hex[:8]}"))


@pytest.mark.parametrize("case", [c for c in CASES if c.via_rest is not None], ids=Case.name)
async def test_rest(case: Case, gen_http: httpx.AsyncClient, foreign_operation: str) -> None:
    await case.check_rest(
        gen_http, foreign_operation, bearer_headers(f"gen-b-{uuid.uuid4().hex[:8]}")
    )


async def test_the_operation_is_untouched_for_its_own_tenant(
    gen_channel: grpc.aio.Channel, foreign_operation: str
) -> None:
    operation = await _get(gen_channel, foreign_operation, bearer(TENANT_A))
    assert not operation.done
    assert unpack_metadata(operation).state == "queued"
