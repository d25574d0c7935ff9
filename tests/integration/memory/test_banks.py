"""Memory banks: the default bank, custom topics, TTL and revision settings, CRUD."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2

from contextiq.memory.v1 import memory_pb2, memory_service_pb2, memory_service_pb2_grpc
from tests.integration.memory.conftest import create, field_of, reason_of

Auth = Callable[..., tuple[tuple[str, str], ...]]
Banks = memory_service_pb2_grpc.MemoryBankServiceStub
Stub = memory_service_pb2_grpc.MemoryServiceStub

MANAGED = {
    "USER_PERSONAL_INFO",
    "USER_PREFERENCES",
    "KEY_CONVERSATION_DETAILS",
    "EXPLICIT_INSTRUCTIONS",
}


async def test_default_bank_exists_without_configuration(bank_stub: Banks, auth: Auth) -> None:
    bank = await bank_stub.GetMemoryBank(
        memory_service_pb2.GetMemoryBankRequest(id="default"), metadata=auth("MEMORY_READ")
    )
    assert bank.id == "default"
    assert {t.id for t in bank.topics} == MANAGED
    assert all(t.type == "managed" for t in bank.topics)
    assert bank.embedding_model == "local/all-MiniLM-L6-v2"
    assert bank.embedding_dimension == 384
    assert bank.enable_revisions is True
    listed = await bank_stub.ListMemoryBanks(
        memory_service_pb2.ListMemoryBanksRequest(), metadata=auth()
    )
    assert [b.id for b in listed.memory_banks] == ["default"]


async def test_custom_topics_are_the_topics_memories_may_carry(
    bank_stub: Banks, memories: Stub, auth: Auth
) -> None:
    topics = [
        memory_pb2.MemoryTopic(id="USER_PREFERENCES"),
        memory_pb2.MemoryTopic(
            id="dietary_needs",
            type="custom",
            label="Dietary needs",
            description="Allergies and diets",
            extraction_prompt="Only medical or ethical diets.",
        ),
    ]
    example = memory_pb2.FewShotExample(
        conversation=[memory_pb2.ExampleTurn(author="user", text="I'm vegan")],
        generated_memories=[
            memory_pb2.ExampleFact(fact="The user is vegan", topic="dietary_needs")
        ],
    )
    created = await bank_stub.CreateMemoryBank(
        memory_service_pb2.CreateMemoryBankRequest(
            memory_bank=memory_pb2.MemoryBank(
                display_name="Food",
                topics=topics,
                few_shot_examples=[example],
                extraction_model="openai/gpt-4o-mini",
                scope_keys=["user_id"],
                enable_revisions=False,
            ),
            memory_bank_id="food",
        ),
        metadata=auth(),
    )
    assert [t.id for t in created.topics] == ["USER_PREFERENCES", "dietary_needs"]
    assert created.few_shot_examples[0].generated_memories[0].fact == "The user is vegan"
    assert created.extraction_model == "openai/gpt-4o-mini"
    assert created.enable_revisions is False
    assert created.etag
    memory = await create(
        memories, auth(), "The user is vegan", bank_id="food", topic="dietary_needs"
    )
    assert memory.revision_count == 0  # revisions are off in this bank
    revisions = await memories.ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(memory_id=memory.id), metadata=auth()
    )
    assert list(revisions.revisions) == []
    for scope, topic, field in (
        ({"user_id": "u1"}, "USER_PERSONAL_INFO", "topic"),
        ({"agent_id": "a"}, "", "scope"),
    ):
        request = memory_service_pb2.CreateMemoryRequest(
            scope=scope, fact="x", bank_id="food", topic=topic
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await memories.CreateMemory(request, metadata=auth())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(info.value) == field


async def test_update_stores_the_default_bank_and_checks_etags(
    bank_stub: Banks, auth: Auth
) -> None:
    updated = await bank_stub.UpdateMemoryBank(
        memory_service_pb2.UpdateMemoryBankRequest(
            memory_bank=memory_pb2.MemoryBank(id="default", display_name="Mine"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=auth(),
    )
    assert updated.display_name == "Mine"
    assert {t.id for t in updated.topics} == MANAGED
    again = await bank_stub.UpdateMemoryBank(
        memory_service_pb2.UpdateMemoryBankRequest(
            memory_bank=memory_pb2.MemoryBank(id="default", scope_keys=["user_id"]),
            etag=updated.etag,
        ),
        metadata=auth(),
    )
    assert list(again.scope_keys) == ["user_id"]
    assert again.display_name == "Mine"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bank_stub.UpdateMemoryBank(
            memory_service_pb2.UpdateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(id="default", display_name="x"), etag=updated.etag
            ),
            metadata=auth(),
        )
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert reason_of(info.value) == "ETAG_MISMATCH"


async def test_bank_validation_names_fields(bank_stub: Banks, auth: Auth) -> None:
    cases = [
        ("Bad Id", memory_pb2.MemoryBank(), "memory_bank_id"),
        (
            "ok",
            memory_pb2.MemoryBank(topics=[memory_pb2.MemoryTopic(id="")]),
            "memory_bank.topics[0].id",
        ),
        (
            "ok",
            memory_pb2.MemoryBank(topics=[memory_pb2.MemoryTopic(id="custom_one", type="custom")]),
            "memory_bank.topics[0].description",
        ),
        ("ok", memory_pb2.MemoryBank(embedding_model="local/other"), "memory_bank.embedding_model"),
        (
            "ok",
            memory_pb2.MemoryBank(
                few_shot_examples=[
                    memory_pb2.FewShotExample(
                        conversation=[memory_pb2.ExampleTurn(author="bot", text="x")]
                    )
                ]
            ),
            "memory_bank.few_shot_examples[0].conversation[0].author",
        ),
    ]
    for bank_id, bank, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await bank_stub.CreateMemoryBank(
                memory_service_pb2.CreateMemoryBankRequest(
                    memory_bank=bank, memory_bank_id=bank_id
                ),
                metadata=auth(),
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field_of(info.value) == field
    listed = await bank_stub.ListMemoryBanks(
        memory_service_pb2.ListMemoryBanksRequest(), metadata=auth()
    )
    assert [b.id for b in listed.memory_banks] == ["default"]


async def test_create_list_and_delete_banks(bank_stub: Banks, memories: Stub, auth: Auth) -> None:
    for name in ("beta", "alpha", "gamma"):
        await bank_stub.CreateMemoryBank(
            memory_service_pb2.CreateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(), memory_bank_id=name
            ),
            metadata=auth(),
        )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bank_stub.CreateMemoryBank(
            memory_service_pb2.CreateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(), memory_bank_id="alpha"
            ),
            metadata=auth(),
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    first = await bank_stub.ListMemoryBanks(
        memory_service_pb2.ListMemoryBanksRequest(page_size=2), metadata=auth()
    )
    second = await bank_stub.ListMemoryBanks(
        memory_service_pb2.ListMemoryBanksRequest(page_size=2, page_token=first.next_page_token),
        metadata=auth(),
    )
    assert [b.id for b in [*first.memory_banks, *second.memory_banks]] == [
        "alpha",
        "beta",
        "default",
        "gamma",
    ]
    await create(memories, auth(), "in alpha", bank_id="alpha")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bank_stub.DeleteMemoryBank(
            memory_service_pb2.DeleteMemoryBankRequest(id="alpha"), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await bank_stub.DeleteMemoryBank(
        memory_service_pb2.DeleteMemoryBankRequest(id="alpha", force=True), metadata=auth()
    )
    await bank_stub.DeleteMemoryBank(
        memory_service_pb2.DeleteMemoryBankRequest(id="beta"), metadata=auth()
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bank_stub.GetMemoryBank(
            memory_service_pb2.GetMemoryBankRequest(id="alpha"), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bank_stub.DeleteMemoryBank(
            memory_service_pb2.DeleteMemoryBankRequest(id="default"), metadata=auth()
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create(memories, auth(), "x", bank_id="alpha")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bank_configuration_needs_admin(bank_stub: Banks, auth: Auth) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bank_stub.CreateMemoryBank(
            memory_service_pb2.CreateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(), memory_bank_id="x"
            ),
            metadata=auth("MEMORY_WRITE"),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
