"""Procedural validation: every bad field is INVALID_ARGUMENT naming it, steps are numbered,
and search texts carry what each kind is found by."""

from __future__ import annotations

import pytest

from ciq_runtime.errors import InvalidArgument, NotFound
from contextiq.procedural.v1 import procedural_pb2
from memory_svc.procedural import validation
from memory_svc.procedural.convert import search_text


def _field(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(InvalidArgument) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return str(info.value.field)


def test_steps_are_numbered_in_order() -> None:
    steps = validation.workflow_steps(
        [procedural_pb2.WorkflowStep(action=" a "), procedural_pb2.WorkflowStep(action="b")],
        field="workflow.steps",
    )
    assert [(s["order"], s["action"]) for s in steps] == [(1, "a"), (2, "b")]
    ordered = validation.workflow_steps(
        [
            procedural_pb2.WorkflowStep(action="b", order=2),
            procedural_pb2.WorkflowStep(action="a", order=1),
        ],
        field="workflow.steps",
    )
    assert [s["action"] for s in ordered] == ["a", "b"]


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([], "workflow.steps"),
        ([procedural_pb2.WorkflowStep(action="a", order=3)], "workflow.steps"),
        (
            [procedural_pb2.WorkflowStep(action="a"), procedural_pb2.WorkflowStep(action=" ")],
            "workflow.steps[1].action",
        ),
    ],
)
def test_bad_steps_name_the_field(steps: list[procedural_pb2.WorkflowStep], field: str) -> None:
    assert _field(validation.workflow_steps, steps, field="workflow.steps") == field


def test_skill_types_outcomes_and_kinds() -> None:
    assert validation.skill_type("coordination", field="f") == "coordination"
    assert _field(validation.skill_type, "Tool_Usage", field="skill.skill_type") == (
        "skill.skill_type"
    )
    body = procedural_pb2.Trajectory(
        agent_id="a",
        task_description="t",
        steps=[procedural_pb2.TrajectoryStep(action="x")],
        outcome="maybe",
    )
    assert _field(validation.validate_new_trajectory, body, prefix="trajectory.") == (
        "trajectory.outcome"
    )
    assert validation.validate_kinds([]) == ("workflow", "skill", "trajectory")
    assert validation.validate_kinds(["trajectory", "skill"]) == ("skill", "trajectory")
    assert _field(validation.validate_kinds, ["skills"]) == "kinds[0]"
    assert _field(validation.validate_rate, float("nan"), field="min_success_rate") == (
        "min_success_rate"
    )


def test_update_paths() -> None:
    updatable = validation.SKILL_UPDATABLE
    body = procedural_pb2.Skill(id="x", name="n", success_rate=0.5)
    assert validation.update_paths(body, None, updatable=updatable, field="skill") == {"name"}
    assert validation.update_paths(body, ["*"], updatable=updatable, field="skill") == updatable
    assert _field(
        validation.update_paths, body, ["version"], updatable=updatable, field="skill"
    ) == ("update_mask")
    assert _field(
        validation.update_paths,
        procedural_pb2.Skill(id="x"),
        None,
        updatable=updatable,
        field="skill",
    ) == ("update_mask")


def test_ids() -> None:
    with pytest.raises(NotFound):
        validation.parse_id("nope", what="skill")
    assert _field(validation.parse_id, "", what="skill", field="skill_id") == "skill_id"


def test_search_texts() -> None:
    workflow = search_text(
        "workflow",
        {
            "name": "Deploy",
            "description": "ship it",
            "steps": [{"action": "build", "reasoning": "why"}],
        },
    )
    assert workflow == "Deploy. ship it. build why"
    skill = search_text(
        "skill",
        {"name": "S", "skill_type": "tool_usage", "description": "", "implementation": "x" * 5000},
    )
    assert skill.startswith("S. tool usage. x")
    assert len(skill) < 1100
    trajectory = search_text(
        "trajectory",
        {
            "task_description": "Book",
            "outcome": "failure",
            "learning_points": ["check dates"],
            "steps": [{"action": "search"}],
        },
    )
    assert trajectory == "Book. outcome failure. check dates. search"
