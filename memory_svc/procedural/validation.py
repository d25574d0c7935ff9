"""Request validation for procedural memory: every check runs before anything is embedded or
written, and each failure is INVALID_ARGUMENT naming the field (``workflow.steps[2].action``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import json_format, struct_pb2

from ciq_runtime.errors import InvalidArgument
from contextiq.procedural.v1 import procedural_pb2
from memory_svc.scopes import validate_scope
from memory_svc.validation import parse_id, validate_request_id

__all__ = [
    "KINDS",
    "OUTCOMES",
    "SKILL_TYPES",
    "NewSkill",
    "NewTrajectory",
    "NewWorkflow",
    "parse_id",
    "validate_kinds",
    "validate_new_skill",
    "validate_new_trajectory",
    "validate_new_workflow",
    "validate_optional_scope",
    "validate_request_id",
]

SKILL_TYPES: Final = ("tool_usage", "reasoning_pattern", "coordination")
OUTCOMES: Final = ("success", "failure", "partial")
KINDS: Final = ("workflow", "skill", "trajectory")

MAX_NAME: Final = 200
MAX_TEXT: Final = 8_000
MAX_IMPLEMENTATION: Final = 65_536
MAX_STEPS: Final = 200
MAX_STEP_TEXT: Final = 4_000
MAX_LEARNING_POINTS: Final = 100
MAX_AGENT_ID: Final = 256
_MAX_JSON_BYTES: Final = 16_384

WORKFLOW_UPDATABLE: Final = frozenset(
    {"name", "description", "steps", "success_metrics", "metadata", "agent_id"}
)
SKILL_UPDATABLE: Final = frozenset(
    {"name", "description", "skill_type", "implementation", "metadata", "agent_id"}
)
#: Skill fields whose change makes a new version.
SKILL_CONTENT: Final = frozenset({"name", "description", "skill_type", "implementation"})


def validate_optional_scope(scope: Mapping[str, str], *, field: str) -> dict[str, str]:
    """A scope of up to five non-empty pairs; empty is allowed (tenant-wide objects)."""
    return validate_scope(scope, field=field) if scope else {}


def text_field(value: str, *, field: str, limit: int, required: bool) -> str:
    """A string stripped of surrounding blanks, bounded, non-blank when required."""
    text = value.strip()
    if required and not text:
        raise InvalidArgument(f"{field} must not be empty", field=field)
    if len(text) > limit:
        raise InvalidArgument(f"{field} is limited to {limit} characters", field=field)
    return text


def json_object(value: struct_pb2.Struct, *, field: str) -> dict[str, Any]:
    """A Struct as JSON, bounded in size."""
    data: dict[str, Any] = json_format.MessageToDict(value)
    if len(json.dumps(data)) > _MAX_JSON_BYTES:
        raise InvalidArgument(f"{field} is limited to {_MAX_JSON_BYTES} bytes of JSON", field=field)
    return data


def skill_type(value: str, *, field: str) -> str:
    """One of :data:`SKILL_TYPES`."""
    if value not in SKILL_TYPES:
        shown = repr(value) if value else "empty"
        raise InvalidArgument(
            f"{field} is {shown}; expected one of {', '.join(SKILL_TYPES)}", field=field
        )
    return value


def workflow_steps(
    steps: Sequence[procedural_pb2.WorkflowStep], *, field: str
) -> list[dict[str, Any]]:
    """Ordered workflow steps as proto JSON, numbered 1..n.

    Steps either all leave ``order`` unset (their position is their order) or carry each
    position 1..n exactly once (they are sorted by it).
    """
    if not steps:
        raise InvalidArgument(f"{field} must contain at least one step", field=field)
    if len(steps) > MAX_STEPS:
        raise InvalidArgument(f"{field} is limited to {MAX_STEPS} steps", field=field)
    orders = [step.order for step in steps]
    if any(orders):
        if sorted(orders) != list(range(1, len(steps) + 1)):
            raise InvalidArgument(
                f"{field}: order must number the steps 1..{len(steps)} once each, "
                "or be left unset on every step",
                field=field,
            )
        indexed = sorted(enumerate(steps), key=lambda item: item[1].order)
    else:
        indexed = list(enumerate(steps))
    out: list[dict[str, Any]] = []
    for position, (i, step) in enumerate(indexed, start=1):
        prefix = f"{field}[{i}]"
        text_field(step.action, field=f"{prefix}.action", limit=MAX_STEP_TEXT, required=True)
        text_field(step.reasoning, field=f"{prefix}.reasoning", limit=MAX_STEP_TEXT, required=False)
        json_object(step.input_schema, field=f"{prefix}.input_schema")
        json_object(step.output_schema, field=f"{prefix}.output_schema")
        copy = procedural_pb2.WorkflowStep()
        copy.CopyFrom(step)
        copy.order = position
        copy.action = step.action.strip()
        copy.reasoning = step.reasoning.strip()
        out.append(json_format.MessageToDict(copy, preserving_proto_field_name=True))
    return out


def trajectory_steps(
    steps: Sequence[procedural_pb2.TrajectoryStep], *, field: str
) -> list[dict[str, Any]]:
    """Trajectory steps as proto JSON, in order."""
    if not steps:
        raise InvalidArgument(f"{field} must contain at least one step", field=field)
    if len(steps) > MAX_STEPS:
        raise InvalidArgument(f"{field} is limited to {MAX_STEPS} steps", field=field)
    out: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        prefix = f"{field}[{i}]"
        text_field(step.action, field=f"{prefix}.action", limit=MAX_STEP_TEXT, required=True)
        for name in ("observation", "reasoning", "tool_name"):
            text_field(
                getattr(step, name), field=f"{prefix}.{name}", limit=MAX_STEP_TEXT, required=False
            )
        out.append(json_format.MessageToDict(step, preserving_proto_field_name=True))
    return out


def learning_points(values: Sequence[str], *, field: str) -> list[str]:
    """Non-blank lessons of bounded length and number."""
    if len(values) > MAX_LEARNING_POINTS:
        raise InvalidArgument(f"{field} is limited to {MAX_LEARNING_POINTS} items", field=field)
    return [
        text_field(value, field=f"{field}[{i}]", limit=MAX_STEP_TEXT, required=True)
        for i, value in enumerate(values)
    ]


def agent_id(value: str, *, field: str, required: bool = False) -> str:
    """An agent id (required for trajectories)."""
    return text_field(value, field=field, limit=MAX_AGENT_ID, required=required)


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A validated workflow body."""

    name: str
    description: str
    scope: dict[str, str]
    steps: list[dict[str, Any]]
    success_metrics: dict[str, Any]
    metadata: dict[str, Any]
    agent_id: str


def validate_new_workflow(workflow: procedural_pb2.Workflow, *, prefix: str) -> NewWorkflow:
    """Validate the body of CreateWorkflow (``prefix`` is ``"workflow."``)."""
    return NewWorkflow(
        name=text_field(workflow.name, field=f"{prefix}name", limit=MAX_NAME, required=True),
        description=text_field(
            workflow.description, field=f"{prefix}description", limit=MAX_TEXT, required=False
        ),
        scope=validate_optional_scope(workflow.scope, field=f"{prefix}scope"),
        steps=workflow_steps(workflow.steps, field=f"{prefix}steps"),
        success_metrics=json_object(workflow.success_metrics, field=f"{prefix}success_metrics"),
        metadata=json_object(workflow.metadata, field=f"{prefix}metadata"),
        agent_id=agent_id(workflow.agent_id, field=f"{prefix}agent_id"),
    )


@dataclass(frozen=True, slots=True)
class NewSkill:
    """A validated skill body."""

    name: str
    description: str
    skill_type: str
    implementation: str
    scope: dict[str, str]
    metadata: dict[str, Any]
    agent_id: str


def validate_new_skill(skill: procedural_pb2.Skill, *, prefix: str) -> NewSkill:
    """Validate the body of CreateSkill (``prefix`` is ``"skill."``)."""
    return NewSkill(
        name=text_field(skill.name, field=f"{prefix}name", limit=MAX_NAME, required=True),
        description=text_field(
            skill.description, field=f"{prefix}description", limit=MAX_TEXT, required=False
        ),
        skill_type=skill_type(skill.skill_type, field=f"{prefix}skill_type"),
        implementation=text_field(
            skill.implementation,
            field=f"{prefix}implementation",
            limit=MAX_IMPLEMENTATION,
            required=True,
        ),
        scope=validate_optional_scope(skill.scope, field=f"{prefix}scope"),
        metadata=json_object(skill.metadata, field=f"{prefix}metadata"),
        agent_id=agent_id(skill.agent_id, field=f"{prefix}agent_id"),
    )


@dataclass(frozen=True, slots=True)
class NewTrajectory:
    """A validated trajectory body."""

    agent_id: str
    task_description: str
    steps: list[dict[str, Any]]
    outcome: str
    learning_points: list[str]
    scope: dict[str, str]
    session_id: str
    metadata: dict[str, Any]


def validate_new_trajectory(trajectory: procedural_pb2.Trajectory, *, prefix: str) -> NewTrajectory:
    """Validate the body of CreateTrajectory (``prefix`` is ``"trajectory."``)."""
    outcome = trajectory.outcome
    if outcome not in OUTCOMES:
        shown = repr(outcome) if outcome else "empty"
        raise InvalidArgument(
            f"{prefix}outcome is {shown}; expected one of {', '.join(OUTCOMES)}",
            field=f"{prefix}outcome",
        )
    return NewTrajectory(
        agent_id=agent_id(trajectory.agent_id, field=f"{prefix}agent_id", required=True),
        task_description=text_field(
            trajectory.task_description,
            field=f"{prefix}task_description",
            limit=MAX_TEXT,
            required=True,
        ),
        steps=trajectory_steps(trajectory.steps, field=f"{prefix}steps"),
        outcome=outcome,
        learning_points=learning_points(
            trajectory.learning_points, field=f"{prefix}learning_points"
        ),
        scope=validate_optional_scope(trajectory.scope, field=f"{prefix}scope"),
        session_id=text_field(
            trajectory.session_id, field=f"{prefix}session_id", limit=MAX_AGENT_ID, required=False
        ),
        metadata=json_object(trajectory.metadata, field=f"{prefix}metadata"),
    )


def update_paths(
    message: Any, mask_paths: Sequence[str] | None, *, updatable: frozenset[str], field: str
) -> frozenset[str]:
    """The fields an Update request changes (AIP-134).

    Without a mask every field set in the body is updated (proto3 scalars have no presence,
    so clearing a field needs an explicit mask); ``*`` means every updatable field.
    """
    if mask_paths is None:
        present = {descriptor.name for descriptor, _ in message.ListFields()}
        paths = present & updatable
    else:
        paths = set(mask_paths)
        if "*" in paths:
            paths = set(updatable)
        unknown = sorted(paths - updatable)
        if unknown:
            raise InvalidArgument(
                f"update_mask: {', '.join(unknown)} cannot be updated "
                f"(updatable: {', '.join(sorted(updatable))})",
                field="update_mask",
            )
    if not paths:
        raise InvalidArgument(
            f"nothing to update: set fields of {field} or name them in update_mask",
            field="update_mask",
        )
    return frozenset(paths)


def validate_kinds(values: Sequence[str]) -> tuple[str, ...]:
    """Search kinds: a subset of :data:`KINDS` (all when empty)."""
    for i, value in enumerate(values):
        if value not in KINDS:
            raise InvalidArgument(
                f"kinds[{i}] is {value!r}; expected one of {', '.join(KINDS)}",
                field=f"kinds[{i}]",
            )
    return tuple(kind for kind in KINDS if kind in values) if values else KINDS


def validate_rate(value: float, *, field: str) -> float:
    """A success rate bound in [0, 1]."""
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{field} must be between 0 and 1", field=field)
    return value
