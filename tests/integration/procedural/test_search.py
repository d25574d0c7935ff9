"""SearchProcedural: one hybrid ranking over workflows, skills and trajectories, filtered by
scope, kind, skill type, success rate and agent; writes are searchable when acknowledged; the
index can be rebuilt from Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2_grpc
from google.protobuf import field_mask_pb2

from contextiq.common.v1 import common_pb2
from contextiq.procedural.v1 import procedural_pb2
from memory_svc.index.protocol import NEVER, IndexFilter, IndexPoint
from tests.integration.memory.conftest import MemoryServer, field_of
from tests.integration.procedural.conftest import (
    Stub,
    Who,
    create_skill,
    create_trajectory,
    create_workflow,
    pb,
)


async def search(stub: Any, who: Who, query: str, **fields: Any) -> list[pb.ProceduralSearchResult]:
    response = await stub.SearchProcedural(
        pb.SearchProceduralRequest(search_query=query, **fields), metadata=who
    )
    return list(response.results)


def ids(results: list[pb.ProceduralSearchResult]) -> list[str]:
    return [getattr(r, r.WhichOneof("item") or "").id for r in results]


@pytest.fixture
async def corpus(stub: Any, auth: Callable[..., Who]) -> dict[str, Any]:
    who = auth()
    return {
        "workflow": await create_workflow(stub, who, scope={"team": "infra"}),
        "weather": await create_skill(stub, who, scope={"team": "infra"}, agent_id="a1"),
        "plan": await create_skill(
            stub,
            who,
            name="Plan before acting",
            skill_type="reasoning_pattern",
            description="Write a step-by-step plan before calling any tool.",
            implementation="First list the steps, then execute them one by one.",
            scope={"team": "infra", "user": "u1"},
        ),
        "flight": await create_trajectory(stub, who, scope={"team": "travel"}),
    }


async def test_one_query_ranks_every_kind(
    stub: Stub, auth: Callable[..., Who], corpus: dict[str, Any]
) -> None:
    who = auth()
    cases = [
        ("weather forecast for a city", "skill", corpus["weather"].id),
        ("book a plane ticket to Lisbon", "trajectory", corpus["flight"].id),
        ("roll out the service release with helm", "workflow", corpus["workflow"].id),
    ]
    for query, kind, expected in cases:
        results = await search(stub, who, query)
        assert results[0].kind == kind, query
        assert ids(results)[0] == expected, query
        assert results[0].score > 0
        assert "dense" in results[0].matched_signals
        assert {r.kind for r in results} == {"workflow", "skill", "trajectory"}
    # Hits carry the whole object, exactly as Get returns it.
    for result in await search(stub, who, "weather forecast for a city"):
        item = getattr(result, result.WhichOneof("item") or "")
        getter = {
            "workflow": (stub.GetWorkflow, pb.GetWorkflowRequest),
            "skill": (stub.GetSkill, pb.GetSkillRequest),
            "trajectory": (stub.GetTrajectory, pb.GetTrajectoryRequest),
        }[result.kind]
        assert item == await getter[0](getter[1](id=item.id), metadata=who)


async def test_kinds_type_rate_agent_and_scope_filters(
    stub: Stub, auth: Callable[..., Who], corpus: dict[str, Any]
) -> None:
    who = auth()
    query = "weather forecast for a city"
    only_trajectories = await search(stub, who, query, kinds=["trajectory"])
    assert ids(only_trajectories) == [corpus["flight"].id]
    two_kinds = await search(stub, who, query, kinds=["skill", "workflow"])
    assert {r.kind for r in two_kinds} == {"skill", "workflow"}
    typed = await search(stub, who, query, skill_type="reasoning_pattern")
    assert ids(typed) == [corpus["plan"].id]
    assert await search(stub, who, query, min_success_rate=0.5) == []
    await stub.RecordSkillOutcome(
        pb.RecordSkillOutcomeRequest(id=corpus["plan"].id, success=True), metadata=who
    )
    rated = await search(stub, who, query, min_success_rate=0.5)
    assert ids(rated) == [corpus["plan"].id]
    assert rated[0].skill.success_rate == 1.0
    # Next to other kinds the rate filters skills only.
    mixed = await search(stub, who, query, kinds=["skill", "workflow"], min_success_rate=0.5)
    assert set(ids(mixed)) == {corpus["plan"].id, corpus["workflow"].id}
    by_agent = await search(stub, who, query, agent_id="a1")
    assert ids(by_agent) == [corpus["weather"].id]
    exact = await search(stub, who, query, scope={"team": "infra"})
    assert set(ids(exact)) == {corpus["workflow"].id, corpus["weather"].id}
    inclusive = await search(
        stub, who, query, scope={"team": "infra"}, scope_match=common_pb2.SCOPE_MATCH_INCLUSIVE
    )
    assert set(ids(inclusive)) == {corpus["workflow"].id, corpus["weather"].id, corpus["plan"].id}
    top1 = await search(stub, who, query, top_k=1)
    assert len(top1) == 1


async def test_writes_are_searchable_when_acknowledged(
    stub: Stub, auth: Callable[..., Who]
) -> None:
    who = auth()
    created = await create_skill(
        stub,
        who,
        name="Resize images",
        description="Shrink photos with the image tool before upload.",
        implementation="image.resize(path, width=800)",
    )
    assert ids(await search(stub, who, "shrink photos"))[:1] == [created.id]
    await stub.UpdateSkill(
        pb.UpdateSkillRequest(
            skill=procedural_pb2.Skill(
                id=created.id,
                name="Transcribe audio",
                description="Turn a voice memo into text with the speech tool.",
                implementation="speech.transcribe(path)",
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "description", "implementation"]),
        ),
        metadata=who,
    )
    found = await search(stub, who, "voice memo to text")
    assert ids(found)[:1] == [created.id]
    assert found[0].skill.version == 2
    await stub.DeleteSkill(pb.DeleteSkillRequest(id=created.id), metadata=who)
    assert await search(stub, who, "voice memo to text") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"search_query": " "}, "search_query"),
        ({"kinds": ["skill", "recipe"]}, "kinds[1]"),
        ({"skill_type": "magic"}, "skill_type"),
        ({"min_success_rate": 1.5}, "min_success_rate"),
        ({"top_k": 101}, "top_k"),
        ({"scope": {"a": ""}}, "scope"),
    ],
)
async def test_bad_searches_name_the_field(
    stub: Stub, auth: Callable[..., Who], fields: dict[str, Any], field: str
) -> None:
    fields.setdefault("search_query", "anything")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SearchProcedural(pb.SearchProceduralRequest(**fields), metadata=auth())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == field


async def test_index_is_rebuilt_from_postgres(
    stub: Stub,
    auth: Callable[..., Who],
    tenant: str,
    procedural_server: MemoryServer,
    corpus: dict[str, Any],
) -> None:
    who = auth()
    parts = procedural_server.parts.procedural
    assert parts is not None
    collection = await parts.index.collection()
    # Lose every point of the tenant, as after a lost or replaced index.
    await procedural_server.parts.index.delete_bank(
        collection, tenant_id=tenant, bank_id="procedural"
    )
    assert await search(stub, who, "weather forecast for a city") == []
    assert await parts.index.rebuild(tenant) == 4
    results = await search(stub, who, "weather forecast for a city")
    assert ids(results)[0] == corpus["weather"].id
    assert len(results) == 4


async def test_failed_index_writes_are_repaired(
    stub: Stub, auth: Callable[..., Who], tenant: str, procedural_server: MemoryServer
) -> None:
    who = auth()
    parts = procedural_server.parts.procedural
    assert parts is not None
    index = procedural_server.parts.index
    original = index.upsert

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("index down")

    index.upsert = broken  # type: ignore[method-assign]
    try:
        created = await create_workflow(stub, who, name="Rotate credentials")
    finally:
        index.upsert = original  # type: ignore[method-assign]
    assert await search(stub, who, "rotate credentials") == []
    procedural_server.clock.offset = parts.index._repair_after * 2
    try:
        assert await parts.index.repair() >= 1
    finally:
        procedural_server.clock.offset = type(procedural_server.clock.offset)(0)
    assert ids(await search(stub, who, "rotate credentials"))[:1] == [created.id]


async def test_reindexing_the_default_bank_rebuilds_procedural_points(
    stub: Stub,
    channel: grpc.aio.Channel,
    auth: Callable[..., Who],
    tenant: str,
    procedural_server: MemoryServer,
    corpus: dict[str, Any],
) -> None:
    from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
    from tests.integration.memory.test_reindex import wait_done

    who = auth()
    parts = procedural_server.parts.procedural
    assert parts is not None
    collection = await parts.index.collection()
    index = procedural_server.parts.index
    await index.delete_bank(collection, tenant_id=tenant, bank_id="procedural")
    # A stale point Postgres does not hold (a lost delete) is dropped by the rebuild.
    await stub.DeleteSkill(pb.DeleteSkillRequest(id=corpus["plan"].id), metadata=who)
    stale = IndexPoint(
        id=uuid.UUID(corpus["plan"].id),
        dense=(await parts.index.embed(["weather forecast for a city"]))[0],
        sparse=parts.index.keyword.document("weather forecast for a city"),
        tenant_id=tenant,
        bank_id="procedural",
        scope_key="[]",
        scope_pairs=[],
        topic="skill:reasoning_pattern",
        created_at=0.0,
        updated_at=0.0,
        expires_at=NEVER,
    )
    await index.upsert(collection, [stale])
    operation = await memory_service_pb2_grpc.MemoryServiceStub(channel).ReindexMemories(
        memory_service_pb2.ReindexMemoriesRequest(), metadata=who
    )
    await wait_done(operations_pb2_grpc.OperationsStub(channel), who, operation.name)
    results = await search(stub, who, "weather forecast for a city")
    assert ids(results)[0] == corpus["weather"].id
    assert corpus["plan"].id not in ids(results)
    assert len(results) == 3
    assert (
        await index.count(
            collection,
            IndexFilter(tenant_id=tenant, bank_id="procedural"),
        )
        == 3
    )
