"""Inline facts with no model configured: consolidation by similarity alone, end to end
(GenerateMemories → outbox → JetStream → worker → ApplyGeneration)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from ciq_runtime.embedded import EmbeddedNats
from contextiq.memory.v1 import memory_pb2, memory_service_pb2
from tests.auth_helpers import bearer
from tests.integration.extraction.pipeline import Pipeline, response_of, running_pipeline

SCOPE = {"user_id": "dana"}


@pytest.fixture(scope="module")
async def pipeline(worker_db: str, worker_nats: EmbeddedNats) -> AsyncIterator[Pipeline]:
    async with running_pipeline(worker_db, worker_nats.url, None, model=None) as running:
        yield running


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def fact(text: str, topic: str = "USER_PREFERENCES") -> memory_pb2.ExtractedFact:
    return memory_pb2.ExtractedFact(fact=text, topic=topic, confidence=0.9)


async def test_facts_without_a_model_create_then_noop_update_and_create(
    pipeline: Pipeline, tenant: str
) -> None:
    first = await pipeline.generate(
        tenant,
        source_type="facts",
        scope=SCOPE,
        facts=[fact("The user prefers window seats."), fact("The user has two cats.")],
    )
    done = response_of(await pipeline.wait_done(tenant, first.name))
    assert done.memories_created == 2
    stored = {m.fact: m for m in await pipeline.list_memories(tenant)}
    assert set(stored) == {"The user prefers window seats.", "The user has two cats."}

    second = await pipeline.generate(
        tenant,
        source_type="facts",
        scope=SCOPE,
        facts=[
            fact("the user prefers window seats"),  # same fact: NOOP
            fact("The user has three cats."),  # a revised detail: UPDATE
            fact("The user is vegetarian."),  # new: CREATE
        ],
    )
    result = response_of(await pipeline.wait_done(tenant, second.name))
    assert (result.memories_created, result.memories_updated, result.memories_unchanged) == (
        1,
        1,
        1,
    )
    after = {m.id: m.fact for m in await pipeline.list_memories(tenant)}
    assert sorted(after.values()) == [
        "The user has three cats.",
        "The user is vegetarian.",
        "The user prefers window seats.",
    ]
    # The update revised the existing memory instead of adding a second one.
    assert after[stored["The user has two cats."].id] == "The user has three cats."
    revisions = await pipeline.memories().ListMemoryRevisions(
        memory_service_pb2.ListMemoryRevisionsRequest(
            memory_id=stored["The user has two cats."].id
        ),
        metadata=bearer(tenant),
    )
    assert len(revisions.revisions) == 2


async def test_facts_of_another_scope_are_not_candidates(pipeline: Pipeline, tenant: str) -> None:
    other = await pipeline.generate(
        tenant,
        source_type="facts",
        scope={"user_id": "someone-else"},
        facts=[fact("The user prefers window seats.")],
    )
    response_of(await pipeline.wait_done(tenant, other.name))
    mine = await pipeline.generate(
        tenant, source_type="facts", scope=SCOPE, facts=[fact("The user prefers window seats.")]
    )
    result = response_of(await pipeline.wait_done(tenant, mine.name))
    assert result.memories_created == 1
    assert result.memories_unchanged == 0
    assert len(await pipeline.list_memories(tenant)) == 2


async def test_dry_run_plans_and_applies_nothing(pipeline: Pipeline, tenant: str) -> None:
    planned = await pipeline.generate(
        tenant,
        source_type="facts",
        scope=SCOPE,
        facts=[fact("The user prefers aisle seats.")],
        config={"dry_run": True},
    )
    result = response_of(await pipeline.wait_done(tenant, planned.name))
    assert [a.action for a in result.planned_actions] == ["CREATE"]
    assert result.planned_actions[0].fact == "The user prefers aisle seats."
    assert await pipeline.list_memories(tenant) == []
