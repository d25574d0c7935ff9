"""API keys, JWTs and permissions over real gRPC, in the owning process and remotely."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from contextiq.auth.v1 import api_key_service_pb2 as pb
from contextiq.auth.v1 import api_key_service_pb2_grpc
from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from tests.auth_helpers import bearer, make_jwt
from tests.integration.auth.conftest import AuthStack, start_stack

Metadata = tuple[tuple[str, str], ...]

MISSING_MEMORY = "00000000-0000-0000-0000-00000000abcd"
#: Codes of a call that got past authentication and authorisation.
PASSED_AUTH = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED}


def keys_stub(channel: grpc.aio.Channel) -> api_key_service_pb2_grpc.ApiKeyServiceStub:
    return api_key_service_pb2_grpc.ApiKeyServiceStub(channel)


def memory_stub(channel: grpc.aio.Channel) -> memory_service_pb2_grpc.MemoryServiceStub:
    return memory_service_pb2_grpc.MemoryServiceStub(channel)


async def create_key(
    channel: grpc.aio.Channel, tenant: str, *permissions: str, ttl_s: int = 0
) -> pb.CreateApiKeyResponse:
    request = pb.CreateApiKeyRequest(display_name="t", permissions=list(permissions))
    if ttl_s:
        request.ttl.CopyFrom(Duration(seconds=ttl_s))
    reply: pb.CreateApiKeyResponse = await keys_stub(channel).CreateApiKey(
        request, metadata=bearer(tenant)
    )
    return reply


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError("no ErrorInfo")


async def test_plaintext_is_shown_once_and_stored_only_as_a_hash(
    sessions_channel: grpc.aio.Channel, pg_dsn: str
) -> None:
    created = await create_key(sessions_channel, "tenant-a", "SESSION_READ")
    assert created.key.startswith("ck_")
    assert created.api_key.tenant_id == "tenant-a"
    assert created.api_key.permissions == ["SESSION_READ"]
    listed = await keys_stub(sessions_channel).ListApiKeys(
        pb.ListApiKeysRequest(), metadata=bearer("tenant-a")
    )
    assert created.api_key.id in [k.id for k in listed.api_keys]
    assert created.key not in str(listed)
    conn = await asyncpg.connect(pg_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT * FROM auth.api_keys WHERE id = $1::uuid", created.api_key.id
        )
    finally:
        await conn.close()
    assert row is not None
    assert created.key not in [str(v) for v in row.values()]
    assert len(row["key_hash"]) == 64


@pytest.mark.parametrize("where", ["sessions", "memory"])
async def test_key_authenticates_locally_and_remotely(
    sessions_channel: grpc.aio.Channel, memory_channel: grpc.aio.Channel, where: str
) -> None:
    created = await create_key(sessions_channel, "tenant-a", "ADMIN")
    key: Metadata = (("x-api-key", created.key),)
    if where == "sessions":
        got = await keys_stub(sessions_channel).GetApiKey(
            pb.GetApiKeyRequest(id=created.api_key.id), metadata=key
        )
        assert got.id == created.api_key.id
    else:
        # Authenticated and authorised in the memory process: the memory does not exist.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await memory_stub(memory_channel).GetMemory(
                memory_service_pb2.GetMemoryRequest(id=MISSING_MEMORY), metadata=key
            )
        assert info.value.code() in PASSED_AUTH


@pytest.mark.parametrize("where", ["sessions", "memory"])
async def test_revoked_key_stops_working_at_once(
    sessions_channel: grpc.aio.Channel, memory_channel: grpc.aio.Channel, where: str
) -> None:
    created = await create_key(sessions_channel, "tenant-a", "ADMIN")
    await keys_stub(sessions_channel).RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=bearer("tenant-a")
    )
    key: Metadata = (("x-api-key", created.key),)
    call = (
        keys_stub(sessions_channel).ListApiKeys(pb.ListApiKeysRequest(), metadata=key)
        if where == "sessions"
        else memory_stub(memory_channel).GetMemory(
            memory_service_pb2.GetMemoryRequest(id=MISSING_MEMORY), metadata=key
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (info.value.details() or "")


async def test_expired_key_is_refused(sessions_channel: grpc.aio.Channel) -> None:
    created = await create_key(sessions_channel, "tenant-a", "ADMIN", ttl_s=1)
    key: Metadata = (("x-api-key", created.key),)
    await keys_stub(sessions_channel).ListApiKeys(pb.ListApiKeysRequest(), metadata=key)
    # The key expires at a known instant: wait until just past it.
    expires = created.api_key.expires_at.ToDatetime(tzinfo=UTC)
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await keys_stub(sessions_channel).ListApiKeys(pb.ListApiKeysRequest(), metadata=key)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(info.value) == "CREDENTIALS_EXPIRED"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "CREDENTIALS_MISSING"),
        ((("x-api-key", "ck_definitely_not_a_real_key_000000"),), "CREDENTIALS_INVALID"),
        ((("x-api-key", "not-a-key"),), "CREDENTIALS_INVALID"),
        ((("authorization", "Basic abc"),), "CREDENTIALS_INVALID"),
        ((("authorization", f"Bearer {make_jwt('t', ttl_s=-120)}"),), "CREDENTIALS_EXPIRED"),
    ],
)
async def test_missing_or_bad_credentials_are_unauthenticated(
    memory_channel: grpc.aio.Channel, metadata: Metadata, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await memory_stub(memory_channel).GetMemory(
            memory_service_pb2.GetMemoryRequest(id=MISSING_MEMORY), metadata=metadata
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(info.value) == reason


async def test_permission_is_checked_before_existence(
    sessions_channel: grpc.aio.Channel,
) -> None:
    # A reader asking about a key that does not exist learns nothing: 403, not 404.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await keys_stub(sessions_channel).GetApiKey(
            pb.GetApiKeyRequest(id="00000000-0000-0000-0000-000000000000"),
            metadata=bearer("tenant-a", "SESSION_READ"),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "MISSING_PERMISSION"


async def test_bad_create_requests_name_the_field(sessions_channel: grpc.aio.Channel) -> None:
    for request, field in [
        (pb.CreateApiKeyRequest(), "permissions"),
        (pb.CreateApiKeyRequest(permissions=["EVERYTHING"]), "permissions"),
        (pb.CreateApiKeyRequest(permissions=["ADMIN"], ttl=Duration(seconds=-5)), "ttl"),
        (pb.CreateApiKeyRequest(permissions=["ADMIN"], display_name="x" * 201), "display_name"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await keys_stub(sessions_channel).CreateApiKey(request, metadata=bearer("tenant-a"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(info.value)
        assert status is not None
        violations = []
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                violations = [v.field for v in bad.field_violations]
        assert violations == [field]


async def test_list_pages_through_every_key(sessions_channel: grpc.aio.Channel) -> None:
    created = {(await create_key(sessions_channel, "pager", "ADMIN")).api_key.id for _ in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = await keys_stub(sessions_channel).ListApiKeys(
            pb.ListApiKeysRequest(page_size=2, page_token=token), metadata=bearer("pager")
        )
        assert len(page.api_keys) <= 2
        seen += [k.id for k in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert set(seen) == created
    assert len(seen) == len(created)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await keys_stub(sessions_channel).ListApiKeys(
            pb.ListApiKeysRequest(page_size=2, page_token=token or "x", show_inactive=True),
            metadata=bearer("pager"),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rate_limit_answers_resource_exhausted_with_retry_info(pg_url: str) -> None:
    stack, servers = await start_stack(pg_url, rate_limit_per_minute=3, rate_limit_burst=1.0)
    try:
        async with grpc.aio.insecure_channel(stack.memory) as channel:
            who = bearer("limited", "MEMORY_READ")
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as ok:
                    await memory_stub(channel).GetMemory(
                        memory_service_pb2.GetMemoryRequest(id=MISSING_MEMORY), metadata=who
                    )
                assert ok.value.code() in PASSED_AUTH
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await memory_stub(channel).GetMemory(
                    memory_service_pb2.GetMemoryRequest(id=MISSING_MEMORY), metadata=who
                )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(info.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details)
        assert retry.retry_delay.seconds >= 1 or retry.retry_delay.nanos > 0
    finally:
        for server in servers:
            await server.stop()


async def test_auth_disabled_acts_as_default_tenant_admin(pg_url: str) -> None:
    stack, servers = await start_stack(pg_url, auth_disabled=True)
    try:
        async with grpc.aio.insecure_channel(stack.sessions) as channel:
            created = await keys_stub(channel).CreateApiKey(
                pb.CreateApiKeyRequest(permissions=["SESSION_READ"])
            )
        assert created.api_key.tenant_id == "default"
    finally:
        for server in servers:
            await server.stop()


async def test_health_needs_no_credentials(auth_stack: AuthStack) -> None:
    async with grpc.aio.insecure_channel(auth_stack.memory) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
