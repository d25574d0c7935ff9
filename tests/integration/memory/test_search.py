"""SearchMemories: hybrid ranking with its signals, scope matching, filters, limits."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import struct_pb2

from contextiq.common.v1 import common_pb2
from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from tests.integration.memory.conftest import create, search

Auth = Callable[..., tuple[tuple[str, str], ...]]
Stub = memory_service_pb2_grpc.MemoryServiceStub
HYBRID = memory_service_pb2.SEARCH_MODE_HYBRID
DENSE = memory_service_pb2.SEARCH_MODE_DENSE
KEYWORD = memory_service_pb2.SEARCH_MODE_KEYWORD

FACTS = [
    "The user enjoys hiking in the Swiss Alps every summer.",
    "The user's favourite programming language is Rust.",
    "The user is allergic to shellfish and peanuts.",
    "The user's daughter Mia starts school in September.",
    "The user prefers window seats on long flights.",
]


async def test_hybrid_ranks_by_meaning_and_keywords_and_reports_signals(
    memories: Stub, auth: Auth
) -> None:
    for fact in FACTS:
        await create(memories, auth(), fact)
    # Meaning only: no word of the query is in the fact.
    semantic = await search(memories, auth("MEMORY_READ"), "mountain trekking trips")
    assert semantic[0].memory.fact == FACTS[0]
    assert semantic[0].dense_score > 0.3
    # A rare keyword: both signals find it.
    keyword = await search(memories, auth(), "Mia")
    top = keyword[0]
    assert top.memory.fact == FACTS[3]
    assert set(top.matched_signals) == {"dense", "keyword"}
    assert top.keyword_score > 0
    assert top.score == max(r.score for r in keyword)
    assert [r.score for r in keyword] == sorted((r.score for r in keyword), reverse=True)
    # Each mode uses its own signal only.
    dense_only = await search(memories, auth(), "Mia", mode=DENSE)
    assert all(r.matched_signals == ["dense"] for r in dense_only)
    assert dense_only[0].score == dense_only[0].dense_score
    keyword_only = await search(memories, auth(), "Mia", mode=KEYWORD)
    assert [r.memory.fact for r in keyword_only] == [FACTS[3]]
    assert keyword_only[0].matched_signals == ["keyword"]


async def test_top_k_default_and_min_score(memories: Stub, auth: Auth) -> None:
    for i in range(12):
        await create(memories, auth(), f"note number {i} about gardening")
    assert len(await search(memories, auth(), "gardening")) == 10
    assert len(await search(memories, auth(), "gardening", top_k=3)) == 3
    assert len(await search(memories, auth(), "gardening", top_k=100)) == 12
    everything = await search(memories, auth(), "gardening", mode=DENSE, top_k=100)
    threshold = everything[5].score
    above = await search(memories, auth(), "gardening", mode=DENSE, top_k=100, min_score=threshold)
    assert len(above) >= 6
    assert all(r.score >= threshold for r in above)


async def test_scope_is_exact_by_default_and_inclusive_on_request(
    memories: Stub, auth: Auth
) -> None:
    shared = await create(memories, auth(), "prefers concise answers", scope={"user_id": "u1"})
    private = await create(
        memories,
        auth(),
        "prefers concise commit messages",
        scope={"user_id": "u1", "agent_id": "coder"},
    )
    other = await create(memories, auth(), "prefers concise emails", scope={"user_id": "u2"})
    exact = await search(memories, auth(), "concise", scope={"user_id": "u1"})
    assert {r.memory.id for r in exact} == {shared.id}
    inclusive = await search(
        memories,
        auth(),
        "concise",
        scope={"user_id": "u1"},
        scope_match=common_pb2.SCOPE_MATCH_INCLUSIVE,
    )
    assert {r.memory.id for r in inclusive} == {shared.id, private.id}
    agent = await search(memories, auth(), "concise", scope={"agent_id": "coder", "user_id": "u1"})
    assert {r.memory.id for r in agent} == {private.id}
    assert other.id not in {r.memory.id for r in inclusive}


async def test_filters_on_topic_metadata_and_time(memories: Stub, auth: Auth) -> None:
    meta = struct_pb2.Struct()
    meta.update({"source": "crm"})
    prefs = await create(memories, auth(), "likes jazz music", topic="USER_PREFERENCES")
    crm = await create(memories, auth(), "likes jazz festivals", metadata=meta)
    await create(memories, auth(), "likes jazz records", topic="USER_PERSONAL_INFO")
    by_topic = await search(memories, auth(), "jazz", filter="topic = USER_PREFERENCES")
    assert [r.memory.id for r in by_topic] == [prefs.id]
    by_meta = await search(memories, auth(), "jazz", filter='metadata.source = "crm"')
    assert [r.memory.id for r in by_meta] == [crm.id]
    none = await search(memories, auth(), "jazz", filter='created_at < "2001-01-01T00:00:00Z"')
    assert none == []
    recent = await search(memories, auth(), "jazz", filter='updated_at > "2001-01-01T00:00:00Z"')
    assert len(recent) == 3


async def test_a_write_is_searchable_when_the_rpc_returns(memories: Stub, auth: Auth) -> None:
    for i in range(20):
        created = await create(memories, auth(), f"the user's locker code is {1000 + i}")
        results = await search(memories, auth(), f"locker code {1000 + i}", mode=KEYWORD, top_k=1)
        assert results[0].memory.id == created.id


async def test_banks_are_searched_separately(
    memories: Stub, bank_stub: memory_service_pb2_grpc.MemoryBankServiceStub, auth: Auth
) -> None:
    from contextiq.memory.v1 import memory_pb2

    await bank_stub.CreateMemoryBank(
        memory_service_pb2.CreateMemoryBankRequest(
            memory_bank=memory_pb2.MemoryBank(display_name="work"), memory_bank_id="work"
        ),
        metadata=auth(),
    )
    home = await create(memories, auth(), "plays the violin")
    work = await create(memories, auth(), "plays the violin at company events", bank_id="work")
    assert [r.memory.id for r in await search(memories, auth(), "violin")] == [home.id]
    in_work = await search(memories, auth(), "violin", bank_id="work")
    assert [r.memory.id for r in in_work] == [work.id]
    assert in_work[0].memory.bank_id == "work"
