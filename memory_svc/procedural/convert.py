"""Rows of the ``procedural`` schema to protobuf messages, and the text each object is
searched by."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from contextiq.procedural.v1 import procedural_pb2
from memory_svc.convert import etag_of, timestamp
from memory_svc.validation import struct_of

__all__ = [
    "candidate_from_row",
    "search_text",
    "skill_from_row",
    "skill_version_from_row",
    "trajectory_from_row",
    "workflow_from_row",
]


def _steps(data: Iterable[dict[str, Any]], message_type: Any) -> list[Any]:
    return [
        json_format.ParseDict(step, message_type(), ignore_unknown_fields=True) for step in data
    ]


def workflow_from_row(row: Any) -> procedural_pb2.Workflow:
    """The Workflow of a ``workflows`` row."""
    message = procedural_pb2.Workflow(
        id=str(row.id),
        name=row.name,
        description=row.description,
        scope=row.scope,
        steps=_steps(row.steps, procedural_pb2.WorkflowStep),
        success_metrics=struct_of(row.success_metrics),
        agent_id=row.agent_id,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        usage_count=row.usage_count,
        metadata=struct_of(row.metadata),
        etag=etag_of(row.id, row.version),
    )
    if row.last_used_at is not None:
        message.last_used_at.CopyFrom(timestamp(row.last_used_at))
    return message


def skill_from_row(row: Any) -> procedural_pb2.Skill:
    """The Skill of a ``skills`` row (its current version)."""
    return procedural_pb2.Skill(
        id=str(row.id),
        name=row.name,
        description=row.description,
        skill_type=row.skill_type,
        implementation=row.implementation,
        success_rate=row.success_rate,
        scope=row.scope,
        created_at=timestamp(row.created_at),
        agent_id=row.agent_id,
        version=row.skill_version,
        success_count=row.success_count,
        failure_count=row.failure_count,
        updated_at=timestamp(row.updated_at),
        metadata=struct_of(row.metadata),
        source_candidate_id=row.source_candidate_id,
        etag=etag_of(row.id, row.version),
    )


def rate(successes: int, failures: int) -> float:
    """Successes over recorded outcomes; 0 before any outcome."""
    total = successes + failures
    return successes / total if total else 0.0


def skill_version_from_row(row: Any) -> procedural_pb2.SkillVersion:
    """The SkillVersion of a ``skill_versions`` row."""
    return procedural_pb2.SkillVersion(
        skill_id=str(row.skill_id),
        version=row.version,
        name=row.name,
        description=row.description,
        implementation=row.implementation,
        skill_type=row.skill_type,
        created_at=timestamp(row.created_at),
        success_rate=rate(row.success_count, row.failure_count),
        success_count=row.success_count,
        failure_count=row.failure_count,
    )


def trajectory_from_row(row: Any) -> procedural_pb2.Trajectory:
    """The Trajectory of a ``trajectories`` row."""
    return procedural_pb2.Trajectory(
        id=str(row.id),
        agent_id=row.agent_id,
        task_description=row.task_description,
        steps=_steps(row.steps, procedural_pb2.TrajectoryStep),
        outcome=row.outcome,
        learning_points=row.learning_points,
        created_at=timestamp(row.created_at),
        scope=row.scope,
        session_id=row.session_id,
        metadata=struct_of(row.metadata),
    )


def candidate_from_row(row: Any) -> procedural_pb2.SkillCandidate:
    """The SkillCandidate of a ``skill_candidates`` row."""
    return procedural_pb2.SkillCandidate(
        id=str(row.id),
        kind=row.kind,
        name=row.name,
        description=row.description,
        skill_type=row.skill_type,
        implementation=row.implementation,
        target_workflow_id=row.target_workflow_id,
        proposed_steps=_steps(row.proposed_steps, procedural_pb2.WorkflowStep),
        learning_points=row.learning_points,
        evidence_trajectory_ids=row.evidence_trajectory_ids,
        rationale=row.rationale,
        confidence=row.confidence,
        state=row.state,
        operation_name=row.operation_name,
        promoted_skill_id=row.promoted_skill_id,
        scope=row.scope,
        created_at=timestamp(row.created_at),
    )


_IMPLEMENTATION_CHARS = 1_000


def search_text(kind: str, values: dict[str, Any]) -> str:
    """The text an object is embedded and keyword-indexed by.

    Workflows: name, description and the steps' actions and reasoning. Skills: name, type,
    description and the start of the implementation (long code adds little meaning past its
    head). Trajectories: task, outcome, learning points and the steps' actions.
    """
    if kind == "workflow":
        steps = "; ".join(
            " ".join(part for part in (step.get("action", ""), step.get("reasoning", "")) if part)
            for step in values["steps"]
        )
        parts = [values["name"], values["description"], steps]
    elif kind == "skill":
        parts = [
            values["name"],
            values["skill_type"].replace("_", " "),
            values["description"],
            values["implementation"][:_IMPLEMENTATION_CHARS],
        ]
    else:
        steps = "; ".join(step.get("action", "") for step in values["steps"])
        parts = [
            values["task_description"],
            f"outcome {values['outcome']}",
            " ".join(values["learning_points"]),
            steps,
        ]
    return ". ".join(part for part in parts if part)
