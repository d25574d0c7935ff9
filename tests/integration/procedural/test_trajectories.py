"""Trajectories: store, get and list an agent's runs; bad runs are rejected naming the field."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from contextiq.procedural.v1 import procedural_pb2
from tests.integration.memory.conftest import field_of
from tests.integration.procedural.conftest import Stub, Who, create_trajectory, pb, trajectory


async def test_store_get_and_list(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    stored = await create_trajectory(
        stub,
        who,
        learning_points=["compare prices before booking"],
        scope={"user_id": "u1"},
        session_id="s-1",
        metadata={"run": 7},
    )
    assert stored.id
    assert stored.steps[0].tool_name == "flights.search"
    fetched = await stub.GetTrajectory(pb.GetTrajectoryRequest(id=stored.id), metadata=who)
    assert fetched == stored
    failed = await create_trajectory(stub, who, task="Book a hotel", outcome="failure")
    partial = await create_trajectory(stub, who, outcome="partial", agent_id="other")

    async def ids(filter_text: str) -> list[str]:
        listed = await stub.ListTrajectories(
            pb.ListTrajectoriesRequest(filter=filter_text), metadata=who
        )
        return [t.id for t in listed.trajectories]

    assert await ids("") == [partial.id, failed.id, stored.id]
    assert await ids('outcome = "failure"') == [failed.id]
    assert await ids('agent_id = "other"') == [partial.id]
    assert await ids('scope.user_id = "u1"') == [stored.id]
    assert await ids('session_id = "s-1"') == [stored.id]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (trajectory(steps=[]), "trajectory.steps"),
        (trajectory(outcome=""), "trajectory.outcome"),
        (trajectory(outcome="won"), "trajectory.outcome"),
        (trajectory(agent_id=""), "trajectory.agent_id"),
        (trajectory(task=""), "trajectory.task_description"),
        (
            trajectory(steps=[procedural_pb2.TrajectoryStep(observation="no action")]),
            "trajectory.steps[0].action",
        ),
        (trajectory(learning_points=["ok", " "]), "trajectory.learning_points[1]"),
    ],
)
async def test_bad_trajectories_are_rejected_naming_the_field(
    stub: Stub, auth: Callable[..., Who], body: procedural_pb2.Trajectory, field: str
) -> None:
    who = auth()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateTrajectory(pb.CreateTrajectoryRequest(trajectory=body), metadata=who)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == field
    listed = await stub.ListTrajectories(pb.ListTrajectoriesRequest(), metadata=who)
    assert not listed.trajectories


async def test_request_id_makes_create_idempotent(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    first = await create_trajectory(stub, who, request_id="run-1")
    again = await create_trajectory(stub, who, request_id="run-1")
    assert again == first
