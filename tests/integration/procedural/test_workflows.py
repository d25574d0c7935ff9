"""Workflows: create / get / list / update / delete and usage counting, with bad input
rejected before anything is written."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2

from contextiq.procedural.v1 import procedural_pb2
from tests.integration.memory.conftest import field_of, reason_of
from tests.integration.procedural.conftest import Stub, Who, create_workflow, pb, workflow


async def test_create_get_update_delete(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    created = await create_workflow(
        stub, who, scope={"team": "infra"}, agent_id="deployer", success_metrics={"p95_s": 30}
    )
    assert created.id
    assert created.etag
    assert created.usage_count == 0
    assert [step.order for step in created.steps] == [1, 2, 3]
    assert created.steps[0].reasoning == "catch regressions"
    assert dict(created.scope) == {"team": "infra"}
    assert created.success_metrics["p95_s"] == 30
    fetched = await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=who)
    assert fetched == created

    updated = await stub.UpdateWorkflow(
        pb.UpdateWorkflowRequest(
            workflow=procedural_pb2.Workflow(
                id=created.id,
                steps=[procedural_pb2.WorkflowStep(action="canary first", order=1)],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["steps"]),
            etag=created.etag,
        ),
        metadata=who,
    )
    assert [step.action for step in updated.steps] == ["canary first"]
    assert updated.name == created.name
    assert updated.etag != created.etag
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(
                workflow=procedural_pb2.Workflow(id=created.id, name="other"), etag=created.etag
            ),
            metadata=who,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert reason_of(stale.value) == "ETAG_MISMATCH"

    await stub.DeleteWorkflow(pb.DeleteWorkflowRequest(id=created.id), metadata=who)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=who)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_steps_follow_their_order_field(stub: Stub, auth: Callable[..., Who]) -> None:
    created = await create_workflow(
        stub,
        auth(),
        steps=[
            procedural_pb2.WorkflowStep(action="second", order=2),
            procedural_pb2.WorkflowStep(action="first", order=1),
        ],
    )
    assert [(s.order, s.action) for s in created.steps] == [(1, "first"), (2, "second")]


async def test_record_usage_counts(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    created = await create_workflow(stub, who)
    for expected in (1, 2, 3):
        used = await stub.RecordWorkflowUsage(
            pb.RecordWorkflowUsageRequest(id=created.id), metadata=who
        )
        assert used.usage_count == expected
    assert used.HasField("last_used_at")
    listed = await stub.ListWorkflows(
        pb.ListWorkflowsRequest(filter="usage_count >= 3"), metadata=who
    )
    assert [w.id for w in listed.workflows] == [created.id]


async def test_request_id_makes_create_idempotent(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    first = await create_workflow(stub, who, request_id="once")
    again = await create_workflow(stub, who, request_id="once", name="different")
    assert again == first
    listed = await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=who)
    assert len(listed.workflows) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (workflow(steps=[]), "workflow.steps"),
        (workflow(name="  "), "workflow.name"),
        (
            workflow(
                steps=[procedural_pb2.WorkflowStep(action="a"), procedural_pb2.WorkflowStep()]
            ),
            "workflow.steps[1].action",
        ),
        (
            workflow(
                steps=[
                    procedural_pb2.WorkflowStep(action="a", order=1),
                    procedural_pb2.WorkflowStep(action="b", order=1),
                ]
            ),
            "workflow.steps",
        ),
        (workflow(scope={"team": ""}), "workflow.scope"),
    ],
)
async def test_bad_workflows_are_rejected_naming_the_field(
    stub: Stub, auth: Callable[..., Who], body: procedural_pb2.Workflow, field: str
) -> None:
    who = auth()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=body), metadata=who)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(info.value) == field
    listed = await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=who)
    assert not listed.workflows


async def test_update_rejects_unknown_paths_and_scope_changes(
    stub: Stub, auth: Callable[..., Who]
) -> None:
    who = auth()
    created = await create_workflow(stub, who, scope={"team": "a"})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(
                workflow=procedural_pb2.Workflow(id=created.id, usage_count=9),
                update_mask=field_mask_pb2.FieldMask(paths=["usage_count"]),
            ),
            metadata=who,
        )
    assert field_of(info.value) == "update_mask"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(
                workflow=procedural_pb2.Workflow(id=created.id, name="x", scope={"team": "b"})
            ),
            metadata=who,
        )
    assert field_of(info.value) == "workflow.scope"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(
                workflow=procedural_pb2.Workflow(id=created.id, steps=[]),
                update_mask=field_mask_pb2.FieldMask(paths=["steps"]),
            ),
            metadata=who,
        )
    assert field_of(info.value) == "workflow.steps"
    assert await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=who) == created


async def test_list_pages_and_filters(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    ids = [(await create_workflow(stub, who, name=f"wf {i}", agent_id="a1")).id for i in range(5)]
    await create_workflow(stub, who, name="other agent", agent_id="a2")
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListWorkflows(
            pb.ListWorkflowsRequest(filter='agent_id = "a1"', page_size=2, page_token=token),
            metadata=who,
        )
        seen.extend(w.id for w in page.workflows)
        token = page.next_page_token
        if not token:
            break
        with pytest.raises(grpc.aio.AioRpcError) as other_filter:
            await stub.ListWorkflows(
                pb.ListWorkflowsRequest(filter='agent_id = "a2"', page_size=2, page_token=token),
                metadata=who,
            )
        assert field_of(other_filter.value) == "page_token"
    assert seen == list(reversed(ids))
    for bad in ("color = 3", "name ="):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListWorkflows(pb.ListWorkflowsRequest(filter=bad), metadata=who)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(info.value) == "filter"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListWorkflows(pb.ListWorkflowsRequest(page_size=-1), metadata=who)
    assert field_of(info.value) == "page_size"
    scoped = await stub.ListWorkflows(
        pb.ListWorkflowsRequest(filter='name = "other agent"'), metadata=who
    )
    assert [w.name for w in scoped.workflows] == ["other agent"]


async def test_unknown_ids(stub: Stub, auth: Callable[..., Who]) -> None:
    who = auth()
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetWorkflow(pb.GetWorkflowRequest(id=bad), metadata=who)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetWorkflow(pb.GetWorkflowRequest(), metadata=who)
    assert field_of(info.value) == "id"


async def test_read_permission_cannot_write(stub: Stub, auth: Callable[..., Who]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await create_workflow(stub, auth("PROCEDURAL_READ"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=auth("PROCEDURAL_READ"))
    assert not listed.workflows
