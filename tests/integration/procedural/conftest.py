"""A real memory server hosting procedural memory (Postgres, embedded Qdrant engine, ONNX
embeddings, real auth), shared by the procedural tests, and helpers building objects."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from contextiq.procedural.v1 import (
    procedural_pb2,
    procedural_service_pb2,
    procedural_service_pb2_grpc,
)
from tests.auth_helpers import bearer
from tests.integration.memory.conftest import MemoryServer, start_memory_server

pb = procedural_service_pb2
Who = tuple[tuple[str, str], ...]
Stub = procedural_service_pb2_grpc.ProceduralServiceStub


@pytest.fixture(scope="session")
async def procedural_server(pg_url: str, service_tmp_path: Path) -> AsyncIterator[MemoryServer]:
    """The memory server the procedural tests share (repair loops slowed: tests drive them)."""
    running = await start_memory_server(
        pg_url,
        index_dir=service_tmp_path / "procedural-index",
        sweep_interval_s=3600.0,
        repair_interval_s=3600.0,
    )
    try:
        yield running
    finally:
        await running.server.stop()


@pytest.fixture
async def channel(procedural_server: MemoryServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(procedural_server.address) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> procedural_service_pb2_grpc.ProceduralServiceStub:
    return procedural_service_pb2_grpc.ProceduralServiceStub(channel)


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tests never see each other's data."""
    return f"p-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def auth(tenant: str) -> Callable[..., Who]:
    """Metadata for the test's tenant: ``auth()`` is ADMIN, ``auth("PROCEDURAL_READ")`` less."""

    def make(*permissions: str) -> Who:
        return bearer(tenant, *permissions)

    return make


def workflow(name: str = "Deploy a service", **fields: Any) -> procedural_pb2.Workflow:
    """A valid workflow body."""
    fields.setdefault("description", "Build, test and roll out a service to production.")
    fields.setdefault(
        "steps",
        [
            procedural_pb2.WorkflowStep(action="run the test suite", reasoning="catch regressions"),
            procedural_pb2.WorkflowStep(action="build the container image"),
            procedural_pb2.WorkflowStep(action="helm upgrade the release"),
        ],
    )
    return procedural_pb2.Workflow(name=name, **fields)


def skill(name: str = "Query the weather API", **fields: Any) -> procedural_pb2.Skill:
    """A valid skill body."""
    fields.setdefault("skill_type", "tool_usage")
    fields.setdefault("description", "Look up the forecast for a city with the weather tool.")
    fields.setdefault("implementation", "weather.get(city=CITY, days=3)")
    return procedural_pb2.Skill(name=name, **fields)


def trajectory(task: str = "Book a flight to Lisbon", **fields: Any) -> procedural_pb2.Trajectory:
    """A valid trajectory body."""
    fields.setdefault("agent_id", "travel-agent")
    fields.setdefault("outcome", "success")
    fields.setdefault(
        "steps",
        [
            procedural_pb2.TrajectoryStep(
                action="search flights", observation="3 options", tool_name="flights.search"
            ),
            procedural_pb2.TrajectoryStep(action="book the cheapest", observation="booked"),
        ],
    )
    return procedural_pb2.Trajectory(task_description=task, **fields)


async def create_workflow(stub: Stub, who: Who, **fields: Any) -> procedural_pb2.Workflow:
    request_id = fields.pop("request_id", "")
    body = workflow(**fields)
    result: procedural_pb2.Workflow = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=body, request_id=request_id), metadata=who
    )
    return result


async def create_skill(stub: Stub, who: Who, **fields: Any) -> procedural_pb2.Skill:
    request_id = fields.pop("request_id", "")
    result: procedural_pb2.Skill = await stub.CreateSkill(
        pb.CreateSkillRequest(skill=skill(**fields), request_id=request_id), metadata=who
    )
    return result


async def create_trajectory(stub: Stub, who: Who, **fields: Any) -> procedural_pb2.Trajectory:
    request_id = fields.pop("request_id", "")
    result: procedural_pb2.Trajectory = await stub.CreateTrajectory(
        pb.CreateTrajectoryRequest(trajectory=trajectory(**fields), request_id=request_id),
        metadata=who,
    )
    return result
