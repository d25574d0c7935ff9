"""Skills: versions (an update of the content makes a new one, older ones stay readable),
outcomes and success rates, type filters, and bad input naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from contextiq.procedural.v1 import procedural_pb2
from tests.integration.memory.conftest import field_of
from tests.integration.procedural.conftest import (
    Stub,
    Who,
    create_skill,
    create_trajectory,
    pb,
    skill,
)


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


async def outcome(
    stub: Stub, who: Who, skill_id: str, success: bool, **fields: Any
) -> procedural_pb2.Skill:
    result: procedural_pb2.Skill = await stub.RecordSkillOutcome(
        pb.RecordSkillOutcomeRequest(id=skill_id, success=success, **fields), metadata=who
    )
    return result


async def test_update_makes_a_new_version_and_old_ones_stay_readable(
    stub: Stub, auth: Callable[..., Who]
) -> None:
    who = auth()
    created = await create_skill(stub, who)
    assert created.version == 1
    await outcome(stub, who, created.id, True)
    v2 = await stub.UpdateSkill(
        pb.UpdateSkillRequest(
            skill=procedural_pb2.Skill(id=created.id, implementation="weather.get(city=CITY)"),
            update_mask=field_mask_pb2.FieldMask(paths=["implementation"]),
        ),
        metadata=who,
    )
    assert v2.version == 2
    assert v2.implementation == "weather.get(city=CITY)"
    # Outcomes count per version: the new version starts afresh.
    assert (v2.success_count, v2.failure_count, v2.success_rate) == (0, 0, 0.0)
    # A metadata change is not a new version.
    v2b = await stub.UpdateSkill(
        pb.UpdateSkillRequest(
            skill=procedural_pb2.Skill(id=created.id, metadata=_struct({"owner": "ops"}))
        ),
        metadata=who,
    )
    assert v2b.version == 2
    assert v2b.metadata["owner"] == "ops"
    versions = await stub.ListSkillVersions(
        pb.ListSkillVersionsRequest(skill_id=created.id), metadata=who
    )
    assert [v.version for v in versions.versions] == [2, 1]
    v1 = await stub.GetSkillVersion(
        pb.GetSkillVersionRequest(skill_id=created.id, version=1), metadata=who
    )
    assert v1.implementation == created.implementation
    assert (v1.success_count, v1.success_rate) == (1, 1.0)
    page = await stub.ListSkillVersions(
        pb.ListSkillVersionsRequest(skill_id=created.id, page_size=1), metadata=who
    )
    assert [v.version for v in page.versions] == [2]
    rest = await stub.ListSkillVersions(
        pb.ListSkillVersionsRequest(
            skill_id=created.id, page_size=1, page_token=page.next_page_token
        ),
        metadata=who,
    )
    assert [v.version for v in rest.versions] == [1]
    assert not rest.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetSkillVersion(
            pb.GetSkillVersionRequest(skill_id=created.id, version=3), metadata=who
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_outcomes_make_the_success_rate(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    created = await create_skill(stub, who)
    run = await create_trajectory(stub, who)
    await outcome(stub, who, created.id, True)
    await outcome(stub, who, created.id, False, notes="timed out")
    after = await outcome(stub, who, created.id, True, trajectory_id=run.id)
    assert (after.success_count, after.failure_count) == (2, 1)
    assert after.success_rate == pytest.approx(2 / 3)
    fetched = await stub.GetSkill(pb.GetSkillRequest(id=created.id), metadata=who)
    assert fetched.success_rate == pytest.approx(2 / 3)


async def test_outcome_needs_the_success_flag(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    created = await create_skill(stub, who)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordSkillOutcome(pb.RecordSkillOutcomeRequest(id=created.id), metadata=who)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == "success"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await outcome(
            stub, who, created.id, True, trajectory_id="00000000-0000-0000-0000-000000000000"
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    fetched = await stub.GetSkill(pb.GetSkillRequest(id=created.id), metadata=who)
    assert (fetched.success_count, fetched.failure_count) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (skill(skill_type="magic"), "skill.skill_type"),
        (skill(skill_type=""), "skill.skill_type"),
        (skill(implementation=" "), "skill.implementation"),
        (skill(name=""), "skill.name"),
    ],
)
async def test_bad_skills_are_rejected_naming_the_field(
    stub: Stub, auth: Callable[..., Who], body: procedural_pb2.Skill, field: str
) -> None:
    who = auth()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateSkill(pb.CreateSkillRequest(skill=body), metadata=who)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == field
    assert not (await stub.ListSkills(pb.ListSkillsRequest(), metadata=who)).skills


async def test_update_to_an_unknown_type_is_rejected(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    created = await create_skill(stub, who)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateSkill(
            pb.UpdateSkillRequest(skill=procedural_pb2.Skill(id=created.id, skill_type="x")),
            metadata=who,
        )
    assert field_of(info.value) == "skill.skill_type"
    assert (await stub.GetSkill(pb.GetSkillRequest(id=created.id), metadata=who)).version == 1


async def test_list_filters_by_type_agent_and_rate(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    tool = await create_skill(stub, who, agent_id="a1")
    reasoning = await create_skill(
        stub, who, name="Plan then act", skill_type="reasoning_pattern", agent_id="a2"
    )
    coordination = await create_skill(stub, who, name="Hand off", skill_type="coordination")
    await outcome(stub, who, reasoning.id, True)

    async def names(**fields: Any) -> list[str]:
        listed = await stub.ListSkills(pb.ListSkillsRequest(**fields), metadata=who)
        return [s.id for s in listed.skills]

    assert await names(skill_type="tool_usage") == [tool.id]
    assert await names(agent_id="a2") == [reasoning.id]
    assert await names(filter="success_rate > 0.5") == [reasoning.id]
    assert await names(filter='skill_type = "coordination"') == [coordination.id]
    assert await names() == [coordination.id, reasoning.id, tool.id]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await names(skill_type="magic")
    assert field_of(info.value) == "skill_type"


async def test_delete_removes_versions(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    created = await create_skill(stub, who)
    await stub.DeleteSkill(pb.DeleteSkillRequest(id=created.id), metadata=who)
    for call in (
        stub.GetSkill(pb.GetSkillRequest(id=created.id), metadata=who),
        stub.ListSkillVersions(pb.ListSkillVersionsRequest(skill_id=created.id), metadata=who),
        stub.DeleteSkill(pb.DeleteSkillRequest(id=created.id), metadata=who),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
