"""Tenant matrix for API keys: tenant B never sees or touches tenant A's keys."""

from __future__ import annotations

import grpc
import httpx
import pytest

from contextiq.auth.v1 import api_key_service_pb2 as pb
from contextiq.auth.v1 import api_key_service_pb2_grpc
from tests.auth_helpers import bearer, bearer_headers
from tests.integration.auth.conftest import AuthStack
from tests.tenant_matrix import LEAK, Case, Metadata


def _stub(channel: grpc.aio.Channel) -> api_key_service_pb2_grpc.ApiKeyServiceStub:
    return api_key_service_pb2_grpc.ApiKeyServiceStub(channel)


async def _get(channel: grpc.aio.Channel, key_id: str, md: Metadata) -> pb.ApiKey:
    reply: pb.ApiKey = await _stub(channel).GetApiKey(pb.GetApiKeyRequest(id=key_id), metadata=md)
    return reply


async def _revoke(channel: grpc.aio.Channel, key_id: str, md: Metadata) -> pb.ApiKey:
    reply: pb.ApiKey = await _stub(channel).RevokeApiKey(
        pb.RevokeApiKeyRequest(id=key_id), metadata=md
    )
    return reply


async def _list(channel: grpc.aio.Channel, key_id: str, md: Metadata) -> pb.ListApiKeysResponse:
    reply: pb.ListApiKeysResponse = await _stub(channel).ListApiKeys(
        pb.ListApiKeysRequest(show_inactive=True, page_size=1000), metadata=md
    )
    return reply


CASES = [
    Case("api_key", "get", _get, lambda i: ("GET", f"/api/v1/api-keys/{i}", None)),
    Case("api_key", "revoke", _revoke, lambda i: ("POST", f"/api/v1/api-keys/{i}:revoke", {})),
    Case(
        "api_key",
        "list",
        _list,
        lambda i: ("GET", "/api/v1/api-keys?show_inactive=true&page_size=1000", None),
        kind=LEAK,
    ),
]


@pytest.fixture(scope="module")
async def foreign_key_id(auth_stack: AuthStack) -> str:
    async with grpc.aio.insecure_channel(auth_stack.sessions) as channel:
        created = await _stub(channel).CreateApiKey(
            pb.CreateApiKeyRequest(display_name="a's key", permissions=["MEMORY_READ"]),
            metadata=bearer("tenant-a"),
        )
    return str(created.api_key.id)


@pytest.mark.parametrize("case", CASES, ids=Case.name)
async def test_grpc(case: Case, sessions_channel: grpc.aio.Channel, foreign_key_id: str) -> None:
    await case.check_grpc(sessions_channel, foreign_key_id, bearer("tenant-b"))


@pytest.mark.parametrize("case", CASES, ids=Case.name)
async def test_rest(case: Case, http: httpx.AsyncClient, foreign_key_id: str) -> None:
    await case.check_rest(http, foreign_key_id, bearer_headers("tenant-b"))


async def test_the_key_is_untouched_for_its_own_tenant(
    sessions_channel: grpc.aio.Channel, foreign_key_id: str
) -> None:
    # B's revoke attempts above must not have revoked A's key.
    key = await _get(sessions_channel, foreign_key_id, bearer("tenant-a"))
    assert not key.HasField("revoked_at")
