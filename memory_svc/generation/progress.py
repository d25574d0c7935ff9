"""ReportOperationProgress: the worker's progress reports, moving forward only.

``queued → extracting → consolidating → applying → done | failed``. A report for a state
behind the current one changes the state not (a redelivered job starts over at
"extracting" while the operation already said "consolidating"), but its attempt and usage are
recorded. Reports after the end are ignored and return the finished operation; a report for
an operation whose cancellation was requested finishes it as CANCELLED, which tells the worker
to stop.

Each report is one compare-and-set UPDATE (with its NOTIFY) against the version of the
operation this process last saw: the row GenerateMemories inserted is the starting point of
the job's first report, and the row returned by one report that of the next. Only a report
whose operation another replica accepted or changed since (or one that lost a race) reads the
row first.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any, Final

from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2
from sqlalchemy import Executable, bindparam, func, select, update

from ciq_runtime.db import transaction
from ciq_runtime.errors import InvalidArgument
from contextiq.memory.v1 import generation_pb2, memory_job_service_pb2
from memory_svc import models
from memory_svc.backend import Backend
from memory_svc.convert import timestamp
from memory_svc.generation.apply import finish_cancelled, load_operation, metadata_of
from memory_svc.generation.states import DONE, FAILED, RANK, REPORTABLE
from memory_svc.operations import OPERATIONS_CHANNEL, OperationStore, pack, to_proto

__all__ = ["RecentOperations", "report_progress"]

o = models.operations
#: Optimistic attempts before falling back to a locking transaction.
_OPTIMISTIC_TRIES: Final = 3
_DEFAULT_SIZE: Final = 4096


class RecentOperations:
    """The rows of running operations as this process last wrote them (an LRU).

    A cached row is only ever a guess: the update it seeds is compare-and-set on the row's
    version, so a row another replica (or a cancellation) changed since is simply re-read.
    """

    def __init__(self, *, size: int = _DEFAULT_SIZE) -> None:
        """Keep at most ``size`` rows."""
        self._size = size
        self._rows: OrderedDict[str, Any] = OrderedDict()

    def get(self, name: str, tenant_id: str) -> Any | None:
        """The row last seen of the tenant's running operation ``name``, if any."""
        row = self._rows.get(name)
        if row is None or row.tenant_id != tenant_id:
            return None
        self._rows.move_to_end(name)
        return row

    def put(self, row: Any) -> None:
        """Remember a running operation's row; forget a finished one."""
        if row.done:
            self._rows.pop(row.name, None)
            return
        self._rows[row.name] = row
        self._rows.move_to_end(row.name)
        while len(self._rows) > self._size:
            self._rows.popitem(last=False)

    def forget(self, name: str) -> None:
        """Drop an operation's row."""
        self._rows.pop(name, None)


#: The compare-and-set statements by the columns they set, built once: a statement object
#: reused keeps its SQL cache key, which SQLAlchemy would otherwise recompute per report.
_CAS_STATEMENTS: dict[tuple[tuple[str, ...], bool], Executable] = {}
# The statement's own transaction commits without waiting for the WAL flush (the setting is
# local to it, the pooled connection keeps its default).
_ASYNC_COMMIT: Final = (
    select(func.set_config("synchronous_commit", "off", True)).scalar_subquery().is_not(None)
)


def _cas_statement(columns: tuple[str, ...], *, durable: bool) -> Executable:
    """The compare-and-set UPDATE of ``columns``.

    A step of a running job (``durable`` False) commits asynchronously: the state is
    advisory while the job runs (a crash of Postgres that lost it leaves the previous step
    shown until the next report, and the job runs again anyway), and the fsync would sit on
    every job's path twice. The end of an operation is always durable.
    """
    statement = _CAS_STATEMENTS.get((columns, durable))
    if statement is None:
        changed = (
            update(o)
            .where(
                o.c.name == bindparam("p_name", type_=o.c.name.type),
                o.c.tenant_id == bindparam("p_tenant_id", type_=o.c.tenant_id.type),
                o.c.version == bindparam("p_version", type_=o.c.version.type),
                *(() if durable else (_ASYNC_COMMIT,)),
            )
            .values(
                {
                    **{c: bindparam(f"p_{c}", type_=o.c[c].type) for c in columns},
                    "version": o.c.version + 1,
                }
            )
            .returning(o)
            .cte("changed")
        )
        statement = select(
            *changed.c, func.pg_notify(OPERATIONS_CHANNEL, changed.c.name).label("notified")
        )
        _CAS_STATEMENTS[(columns, durable)] = statement
    return statement


async def report_progress(
    backend: Backend,
    tenant_id: str,
    request: memory_job_service_pb2.ReportOperationProgressRequest,
    *,
    recent: RecentOperations | None = None,
) -> tuple[operations_pb2.Operation, Any]:
    """Record a progress report; returns the operation as it now stands and its row.

    Args:
        backend: The memory backend.
        tenant_id: The tenant the job acts for.
        request: The report.
        recent: Rows of running operations this process wrote last (see
            :class:`RecentOperations`); None reads the row for every report.
    """
    if request.state not in REPORTABLE:
        raise InvalidArgument(f"state must be one of {', '.join(REPORTABLE)}", field="state")
    if request.extracted_count < 0:
        raise InvalidArgument("extracted_count must not be negative", field="extracted_count")
    if request.attempt < 0:
        raise InvalidArgument("attempt must not be negative", field="attempt")
    if request.state == FAILED and request.HasField("error") and request.error.code == 0:
        raise InvalidArgument("error.code must not be OK for a failure", field="error.code")
    name = request.operation_name
    rows = recent if recent is not None else RecentOperations(size=0)
    # Fast path, without an explicit transaction: a compare-and-set UPDATE on the row's
    # version, from the row this process last saw or else one read now. A lost race or a
    # pending cancellation goes through the locking transaction below.
    row = rows.get(name, tenant_id) if name else None
    async with backend.autocommit() as connection:
        for _ in range(_OPTIMISTIC_TRIES):
            if row is None:
                row = await load_operation(connection, tenant_id=tenant_id, name=name)
            if row.done:
                rows.forget(name)
                return to_proto(row), row
            if row.cancel_requested:
                break
            values = _changes(row, request, backend.clock())
            params = {f"p_{column}": value for column, value in values.items()}
            params.update(p_name=row.name, p_tenant_id=tenant_id, p_version=row.version)
            updated = (
                await connection.execute(
                    _cas_statement(tuple(values), durable=request.state in (DONE, FAILED)),
                    params,
                )
            ).one_or_none()
            if updated is not None:
                rows.put(updated)
                return to_proto(updated), updated
            row = None
    rows.forget(name)
    now = backend.clock()
    async with transaction(backend.sessions) as session:
        row = await load_operation(session, tenant_id=tenant_id, name=name, lock=True)
        if row.done:
            return to_proto(row), row
        if row.cancel_requested:
            await finish_cancelled(session, row, now)
            row = await OperationStore.row(session, tenant_id=tenant_id, name=row.name)
            return to_proto(row), row
        updated = await OperationStore.update_row(
            session, name=row.name, values=_changes(row, request, now)
        )
        return to_proto(updated), updated


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
