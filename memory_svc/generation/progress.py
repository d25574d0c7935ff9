"""ReportOperationProgress: the worker's progress reports, moving forward only.

``queued → extracting → consolidating → applying → done | failed``. A report for a state
behind the current one changes the state not (a redelivered job starts over at
"extracting" while the operation already said "consolidating"), but its attempt and usage are
recorded. Reports after the end are ignored and return the finished operation; a report for
an operation whose cancellation was requested finishes it as CANCELLED, which tells the worker
to stop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2
from sqlalchemy import func, select, update

from ciq_runtime.db import transaction
from ciq_runtime.errors import InvalidArgument
from contextiq.memory.v1 import generation_pb2, memory_job_service_pb2
from memory_svc import models
from memory_svc.backend import Backend
from memory_svc.convert import timestamp
from memory_svc.generation.apply import finish_cancelled, load_operation, metadata_of
from memory_svc.generation.states import DONE, FAILED, RANK, REPORTABLE
from memory_svc.operations import OPERATIONS_CHANNEL, OperationStore, pack, to_proto

__all__ = ["report_progress"]

o = models.operations
#: Optimistic attempts before falling back to a locking transaction.
_OPTIMISTIC_TRIES: Final = 3


async def report_progress(
    backend: Backend,
    tenant_id: str,
    request: memory_job_service_pb2.ReportOperationProgressRequest,
) -> operations_pb2.Operation:
    """Record a progress report; returns the operation as it now stands."""
    if request.state not in REPORTABLE:
        raise InvalidArgument(f"state must be one of {', '.join(REPORTABLE)}", field="state")
    if request.extracted_count < 0:
        raise InvalidArgument("extracted_count must not be negative", field="extracted_count")
    if request.attempt < 0:
        raise InvalidArgument("attempt must not be negative", field="attempt")
    if request.state == FAILED and request.HasField("error") and request.error.code == 0:
        raise InvalidArgument("error.code must not be OK for a failure", field="error.code")
    name = request.operation_name
    # Fast path, two statements without an explicit transaction: read, then update only if
    # the row did not change meanwhile (its version). A lost race or a pending cancellation
    # goes through the locking transaction below.
    async with backend.autocommit() as connection:
        for _ in range(_OPTIMISTIC_TRIES):
            row = await load_operation(connection, tenant_id=tenant_id, name=name)
            if row.done:
                return to_proto(row)
            if row.cancel_requested:
                break
            now = backend.clock()
            changed = (
                update(o)
                .where(o.c.name == row.name, o.c.version == row.version)
                .values(**_changes(row, request, now), version=o.c.version + 1)
                .returning(o)
                .cte("changed")
            )
            updated = (
                await connection.execute(
                    select(
                        *changed.c,
                        func.pg_notify(OPERATIONS_CHANNEL, changed.c.name).label("notified"),
                    )
                )
            ).one_or_none()
            if updated is not None:
                return to_proto(updated)
    now = backend.clock()
    async with transaction(backend.sessions) as session:
        row = await load_operation(session, tenant_id=tenant_id, name=name, lock=True)
        if row.done:
            return to_proto(row)
        if row.cancel_requested:
            await finish_cancelled(session, row, now)
            return to_proto(await OperationStore.row(session, tenant_id=tenant_id, name=row.name))
        updated = await OperationStore.update_row(
            session, name=row.name, values=_changes(row, request, now)
        )
        return to_proto(updated)


def _changes(
    row: Any, request: memory_job_service_pb2.ReportOperationProgressRequest, now: datetime
) -> dict[str, Any]:
    """The new column values of a not-finished operation after a report."""
    metadata = metadata_of(row)
    if RANK[request.state] > RANK.get(metadata.state, 0):
        metadata.state = request.state
    if request.extracted_count > metadata.extracted_count:
        metadata.extracted_count = request.extracted_count
    if request.HasField("usage"):
        metadata.usage.CopyFrom(request.usage)
    attempt = max(row.attempt, request.attempt)
    metadata.attempt = attempt
    metadata.updated_at.CopyFrom(timestamp(now))
    values: dict[str, Any] = {"attempt": attempt, "updated_at": now}
    if request.state in (DONE, FAILED):
        metadata.completed_at.CopyFrom(timestamp(now))
        values["done"] = True
        if request.state == FAILED:
            error = status_pb2.Status()
            if request.HasField("error"):
                error.CopyFrom(request.error)
            else:
                error.code = code_pb2.INTERNAL
                error.message = "memory generation failed"
            values["error"] = error.SerializeToString()
        else:
            response = generation_pb2.GenerateMemoriesResponse()
            if request.HasField("response"):
                response.CopyFrom(request.response)
            metadata.memories_created = response.memories_created
            metadata.memories_updated = response.memories_updated
            metadata.memories_deleted = response.memories_deleted
            metadata.memories_unchanged = response.memories_unchanged
            if response.HasField("usage") and not request.HasField("usage"):
                metadata.usage.CopyFrom(response.usage)
            values["response"] = pack(response)
    values["metadata"] = pack(metadata)
    return values
