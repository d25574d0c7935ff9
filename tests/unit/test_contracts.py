"""The contracts keep the seeds' REST paths and field names, lint clean, and gen/ matches them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, ServiceDescriptor

from contextiq.extraction.v1 import extraction_service_pb2, jobs_pb2
from contextiq.memory.v1 import (
    generation_pb2,
    memory_job_service_pb2,
    memory_pb2,
    memory_service_pb2,
)
from contextiq.procedural.v1 import procedural_pb2, procedural_service_pb2
from contextiq.sessions.v1 import session_pb2, session_service_pb2

REPO = Path(__file__).resolve().parents[2]

SERVICES: list[ServiceDescriptor] = [
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"],
    memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"],
    memory_service_pb2.DESCRIPTOR.services_by_name["MemoryBankService"],
    procedural_service_pb2.DESCRIPTOR.services_by_name["ProceduralService"],
    extraction_service_pb2.DESCRIPTOR.services_by_name["ExtractionService"],
]

# Every REST operation the seeds list (architecture §3.1-§3.3, "Core Services"), verbatim.
SEED_ROUTES = [
    ("POST", "/api/v1/sessions", "CreateSession"),
    ("GET", "/api/v1/sessions/{id}", "GetSession"),
    ("GET", "/api/v1/sessions", "ListSessions"),
    ("DELETE", "/api/v1/sessions/{id}", "DeleteSession"),
    ("POST", "/api/v1/sessions/{session_id}/events", "AppendEvent"),
    ("PATCH", "/api/v1/sessions/{session_id}/state", "UpdateSessionState"),
    ("POST", "/api/v1/memories/generate", "GenerateMemories"),
    ("POST", "/api/v1/memories", "CreateMemory"),
    ("GET", "/api/v1/memories/{id}", "GetMemory"),
    ("GET", "/api/v1/memories", "ListMemories"),
    ("POST", "/api/v1/memories/search", "SearchMemories"),
    ("PATCH", "/api/v1/memories/{memory.id}", "UpdateMemory"),
    ("DELETE", "/api/v1/memories/{id}", "DeleteMemory"),
    ("GET", "/api/v1/memories/{memory_id}/revisions", "ListMemoryRevisions"),
    ("POST", "/api/v1/procedural/workflows", "CreateWorkflow"),
    ("GET", "/api/v1/procedural/workflows/{id}", "GetWorkflow"),
    ("POST", "/api/v1/procedural/skills", "CreateSkill"),
    ("GET", "/api/v1/procedural/skills", "ListSkills"),
    ("POST", "/api/v1/procedural/trajectories", "CreateTrajectory"),
    ("POST", "/api/v1/procedural/search", "SearchProcedural"),
]


def _bindings() -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    for service in SERVICES:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rules: list[http_pb2.HttpRule] = [options.Extensions[annotations_pb2.http]]
            rules += list(rules[0].additional_bindings)
            for rule in rules:
                verb = rule.WhichOneof("pattern")
                assert verb is not None
                found[(verb.upper(), getattr(rule, verb))] = method.name
    return found


@pytest.mark.parametrize(("verb", "path", "rpc"), SEED_ROUTES)
def test_seed_route_is_bound_on_its_exact_path(verb: str, path: str, rpc: str) -> None:
    assert _bindings().get((verb, path)) == rpc


def test_seed_bodies_are_flat() -> None:
    # The seeds post {user_id, agent_id, scope}, {scope, search_query, top_k} and
    # {source_type, source_reference, scope, config}: the request message itself is the body.
    for message, fields in [
        (session_service_pb2.CreateSessionRequest, ["user_id", "agent_id", "scope"]),
        (memory_service_pb2.SearchMemoriesRequest, ["scope", "search_query", "top_k"]),
        (
            generation_pb2.GenerateMemoriesRequest,
            ["source_type", "source_reference", "scope", "config"],
        ),
    ]:
        descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
        assert set(fields) <= set(descriptor.fields_by_name), descriptor.full_name
    body_star = {
        m.name
        for s in SERVICES
        for m in s.methods
        if m.GetOptions().Extensions[annotations_pb2.http].body == "*"
    }
    assert {"CreateSession", "SearchMemories", "GenerateMemories", "CreateMemory"} <= body_star


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        (
            session_pb2.Session,
            "id user_id agent_id scope events state metadata created_at updated_at expires_at",
        ),
        (
            session_pb2.Event,
            "id session_id author invocation_id timestamp content actions branch a2a_message",
        ),
        (session_pb2.EventActions, "state_delta tool_calls tool_outputs"),
        (session_pb2.A2AMessage, "from_agent_id to_agent_id message_type content context"),
        (
            memory_pb2.Memory,
            "id scope fact topic confidence source_session_id metadata created_at updated_at "
            "expires_at revision_count",
        ),
        (
            memory_pb2.MemoryRevision,
            "id memory_id revision_number fact action source_session_id extracted_memories "
            "created_at",
        ),
        (
            memory_pb2.MemoryBank,
            "topics few_shot_examples extraction_model embedding_model ttl_config "
            "enable_revisions scope_keys",
        ),
        (
            memory_pb2.TtlConfig,
            "default_ttl create_ttl generate_created_ttl generate_updated_ttl",
        ),
        (memory_pb2.MemoryTopic, "id type label description extraction_prompt"),
        (
            procedural_pb2.Workflow,
            "id name description scope steps success_metrics agent_id created_at usage_count",
        ),
        (procedural_pb2.WorkflowStep, "order action input_schema output_schema reasoning"),
        (
            procedural_pb2.Skill,
            "id name description skill_type implementation success_rate scope created_at",
        ),
        (
            procedural_pb2.Trajectory,
            "id agent_id task_description steps outcome learning_points created_at",
        ),
        (jobs_pb2.GenerateMemoriesJob, "operation_name tenant_id request enqueued_at"),
    ],
)
def test_resources_carry_the_seed_field_names(message: type, fields: str) -> None:
    assert set(fields.split()) <= set(message.DESCRIPTOR.fields_by_name)  # type: ignore[attr-defined]


def test_generate_and_reindex_are_long_running_operations() -> None:
    service = memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"]
    for name in ("GenerateMemories", "ReindexMemories"):
        assert service.methods_by_name[name].output_type.full_name == (
            "google.longrunning.Operation"
        )


def test_internal_job_service_has_no_rest_binding() -> None:
    service = memory_job_service_pb2.DESCRIPTOR.services_by_name["MemoryJobService"]
    for method in service.methods:
        assert not method.GetOptions().HasExtension(annotations_pb2.http), method.name


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def test_buf_lint_is_clean() -> None:
    result = _run(str(REPO / ".venv" / "bin" / "buf"), "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_gen_is_what_make_gen_produces() -> None:
    result = _run("make", "--no-print-directory", "gen-check")
    assert result.returncode == 0, result.stdout + result.stderr
