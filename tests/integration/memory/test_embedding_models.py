"""Any LiteLLM embedding model per bank (here against a local OpenAI-compatible server), and
what changing a bank's model takes: a reindex."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2_grpc
from google.protobuf import field_mask_pb2

from contextiq.memory.v1 import memory_pb2, memory_service_pb2, memory_service_pb2_grpc
from tests.integration.memory.conftest import (
    MemoryServer,
    create,
    reason_of,
    search,
    start_memory_server,
)
from tests.integration.memory.fake_embeddings import (
    DIMENSION,
    FakeEmbeddings,
    serve_fake_embeddings,
)
from tests.integration.memory.test_reindex import wait_done

Auth = Callable[..., tuple[tuple[str, str], ...]]
MODEL = "openai/fake-embedding-model"


@pytest.fixture(scope="module")
async def litellm_server(
    pg_url: str, service_tmp_path: Path
) -> AsyncIterator[tuple[MemoryServer, FakeEmbeddings]]:
    async with serve_fake_embeddings() as (base_url, fake):
        running = await start_memory_server(
            pg_url,
            index_dir=service_tmp_path / "litellm-index",
            litellm_options={"api_base": base_url, "api_key": "sk-test"},
        )
        try:
            yield running, fake
        finally:
            await running.server.stop()


async def test_a_bank_can_use_a_litellm_embedding_model(
    litellm_server: tuple[MemoryServer, FakeEmbeddings], auth: Auth
) -> None:
    server, fake = litellm_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        banks = memory_service_pb2_grpc.MemoryBankServiceStub(channel)
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        bank = await banks.CreateMemoryBank(
            memory_service_pb2.CreateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(embedding_model=MODEL), memory_bank_id="remote"
            ),
            metadata=auth(),
        )
        assert bank.embedding_dimension == DIMENSION  # the dimension follows the model
        calls = len(fake.calls)
        await create(stub, auth(), "the user collects vintage stamps", bank_id="remote")
        await create(stub, auth(), "the user bakes sourdough bread", bank_id="remote")
        assert len(fake.calls) > calls
        results = await search(
            stub, auth(), "stamps", bank_id="remote", mode=memory_service_pb2.SEARCH_MODE_DENSE
        )
        assert results[0].memory.fact == "the user collects vintage stamps"
        assert results[0].dense_score > results[1].dense_score


async def test_changing_the_model_requires_a_reindex(
    litellm_server: tuple[MemoryServer, FakeEmbeddings], auth: Auth
) -> None:
    server, _ = litellm_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        banks = memory_service_pb2_grpc.MemoryBankServiceStub(channel)
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        ops = operations_pb2_grpc.OperationsStub(channel)
        facts = ["the user drives an electric car", "the user studies Japanese"]
        for fact in facts:
            await create(stub, auth(), fact)
        before = await search(stub, auth(), "language learning")
        assert before[0].memory.fact == facts[1]
        changed = await banks.UpdateMemoryBank(
            memory_service_pb2.UpdateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(id="default", embedding_model=MODEL),
                update_mask=field_mask_pb2.FieldMask(paths=["embedding_model"]),
            ),
            metadata=auth(),
        )
        assert changed.embedding_model == MODEL
        for call in (
            search(stub, auth(), "car"),
            create(stub, auth(), "the user likes tea"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason_of(info.value) == "REINDEX_REQUIRED"
        started = await stub.ReindexMemories(
            memory_service_pb2.ReindexMemoriesRequest(), metadata=auth()
        )
        finished = await wait_done(ops, auth(), started.name)
        assert finished.done
        assert not finished.HasField("error")
        after = await search(stub, auth(), "Japanese", mode=memory_service_pb2.SEARCH_MODE_DENSE)
        assert after[0].memory.fact == facts[1]
        await create(stub, auth(), "the user likes tea")
        bank = await banks.GetMemoryBank(
            memory_service_pb2.GetMemoryBankRequest(id="default"), metadata=auth()
        )
        assert bank.embedding_dimension == DIMENSION


async def test_an_empty_bank_switches_models_at_once(
    litellm_server: tuple[MemoryServer, FakeEmbeddings], auth: Auth
) -> None:
    server, _ = litellm_server
    async with grpc.aio.insecure_channel(server.address) as channel:
        banks = memory_service_pb2_grpc.MemoryBankServiceStub(channel)
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        await banks.UpdateMemoryBank(
            memory_service_pb2.UpdateMemoryBankRequest(
                memory_bank=memory_pb2.MemoryBank(id="default", embedding_model=MODEL)
            ),
            metadata=auth(),
        )
        await create(stub, auth(), "the user swims")
        assert len(await search(stub, auth(), "swims")) == 1
