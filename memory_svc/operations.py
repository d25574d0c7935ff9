"""Long-running operations (AIP-151) stored in ``memory.operations``.

A row holds the operation's packed metadata (progress), and when done its packed response or
its ``google.rpc.Status``. Names are ``operations/<uuid>``; reads are confined to the
caller's tenant, and another tenant's operation is NOT_FOUND like a missing one. The table
carries what the generation issue needs on top (request, request_id, attempt,
cancel_requested, version for watchers).

Every change bumps ``version`` and sends ``NOTIFY memory_operations, '<name>'`` in its
transaction (delivered on commit), so waiters and watchers in any replica wake at once
(:class:`memory_svc.generation.lifecycle.OperationWaiter`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ciq_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from ciq_runtime.filtering import FilterField, ValueKind, compile_filter
from ciq_runtime.pagination import encode_page_token, page_request
from memory_svc import models

__all__ = ["OPERATIONS_CHANNEL", "OperationStore", "pack", "to_proto"]

o = models.operations
_PREFIX: Final = "operations/"
#: Postgres NOTIFY channel carrying the name of every operation that changed.
OPERATIONS_CHANNEL: Final = "memory_operations"

# Hot statements built once: a reused statement object keeps its SQL cache key, which
# SQLAlchemy otherwise recomputes (with the expression building) on every call.
_BY_NAME: Final = select(o).where(
    o.c.tenant_id == bindparam("p_tenant_id", type_=o.c.tenant_id.type),
    o.c.name == bindparam("p_name", type_=o.c.name.type),
)
_BY_NAME_LOCKED: Final = _BY_NAME.with_for_update()
_BY_REQUEST_ID: Final = select(o).where(
    o.c.tenant_id == bindparam("p_tenant_id", type_=o.c.tenant_id.type),
    o.c.request_id == bindparam("p_request_id", type_=o.c.request_id.type),
)
_CREATE_COLUMNS: Final = (
    "name",
    "tenant_id",
    "kind",
    "bank_id",
    "done",
    "metadata",
    "request",
    "request_id",
    "attempt",
    "created_at",
    "updated_at",
)
_CREATE: Final = pg_insert(o).values(
    {c: bindparam(f"p_{c}", type_=o.c[c].type) for c in _CREATE_COLUMNS}
)
_CREATE_ONCE: Final = _CREATE.on_conflict_do_nothing(
    index_elements=[o.c.tenant_id, o.c.request_id],
    index_where=o.c.request_id.is_not(None),
).returning(o)
_CREATE_ALWAYS: Final = _CREATE.returning(o)


def pack(message: Message) -> bytes:
    """A message as serialized ``google.protobuf.Any``."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed.SerializeToString()


def to_proto(row: Any) -> operations_pb2.Operation:
    """The Operation message of an ``operations`` row."""
    operation = operations_pb2.Operation(name=row.name, done=row.done)
    if row.metadata is not None:
        operation.metadata.ParseFromString(row.metadata)
    if row.error is not None:
        operation.error.ParseFromString(row.error)
    elif row.response is not None:
        operation.response.ParseFromString(row.response)
    return operation


def parse_name(name: str) -> str:
    """Check an operation name; a malformed one cannot exist (NOT_FOUND)."""
    if not name:
        raise InvalidArgument("name is required", field="name")
    if not name.startswith(_PREFIX):
        raise NotFound(f"operation {name!r} not found")
    try:
        uuid.UUID(name[len(_PREFIX) :])
    except ValueError:
        raise NotFound(f"operation {name!r} not found") from None
    return name


class OperationStore:
    """SQL over ``operations``; every function takes ``tenant_id`` or a name it owns."""

    @staticmethod
    async def create(
        session: AsyncSession,
        *,
        tenant_id: str,
        kind: str,
        bank_id: str,
        metadata: Message,
        request: Message,
        now: datetime,
    ) -> operations_pb2.Operation:
        """Insert a running operation."""
        name = f"{_PREFIX}{uuid.uuid4()}"
        row = (
            await session.execute(
                insert(o)
                .values(
                    name=name,
                    tenant_id=tenant_id,
                    kind=kind,
                    bank_id=bank_id,
                    done=False,
                    metadata=pack(metadata),
                    request=request.SerializeToString(),
                    attempt=1,
                    created_at=now,
                    updated_at=now,
                )
                .returning(o)
            )
        ).one()
        return to_proto(row)

    @staticmethod
    async def get(session: AsyncSession, *, tenant_id: str, name: str) -> operations_pb2.Operation:
        """The tenant's operation.

        Raises:
            NotFound: Missing, malformed, or another tenant's.
        """
        parse_name(name)
        row = (
            await session.execute(_BY_NAME, {"p_tenant_id": tenant_id, "p_name": name})
        ).one_or_none()
        if row is None:
            raise NotFound(f"operation {name!r} not found")
        return to_proto(row)

    @staticmethod
    async def list_operations(
        session: AsyncSession, *, tenant_id: str, request: operations_pb2.ListOperationsRequest
    ) -> operations_pb2.ListOperationsResponse:
        """The tenant's operations, newest first; filter on ``done``."""
        if request.name not in ("", "operations"):
            raise InvalidArgument('name must be empty or "operations"', field="name")
        where = compile_filter(request.filter, {"done": FilterField(o.c.done, ValueKind.BOOL)})
        params = {"filter": request.filter}
        page = page_request(
            page_size=request.page_size, page_token=request.page_token, params=params
        )
        statement = select(o).where(o.c.tenant_id == tenant_id, where)
        if page.after is not None:
            try:
                stamp, name = page.after
                after = (datetime.fromisoformat(stamp), str(name))
            except (TypeError, ValueError):
                raise InvalidArgument("page_token is malformed", field="page_token") from None
            statement = statement.where(func.row(o.c.created_at, o.c.name) < func.row(*after))
        rows = (
            await session.execute(
                statement.order_by(o.c.created_at.desc(), o.c.name.desc()).limit(page.size + 1)
            )
        ).all()
        response = operations_pb2.ListOperationsResponse(
            operations=[to_proto(row) for row in rows[: page.size]]
        )
        if len(rows) > page.size:
            last = rows[page.size - 1]
            response.next_page_token = encode_page_token(
                last_sort_key=[last.created_at.isoformat(), last.name], params=params
            )
        return response

    @staticmethod
    async def create_once(
        session: AsyncSession,
        *,
        tenant_id: str,
        kind: str,
        bank_id: str,
        metadata: Message,
        request: Message,
        request_id: str | None,
        now: datetime,
        attempt: int = 0,
    ) -> tuple[Any, bool]:
        """Insert an operation unless the tenant already has one with ``request_id``.

        Concurrent retries with the same key are serialised by the unique index: the loser
        waits for the winner's commit and then gets the winner's operation.

        Returns:
            The operation's row (the one inserted, or the one created earlier with
            ``request_id``) and whether this call inserted it.
        """
        name = f"{_PREFIX}{uuid.uuid4()}"
        values = {
            "p_name": name,
            "p_tenant_id": tenant_id,
            "p_kind": kind,
            "p_bank_id": bank_id,
            "p_done": False,
            "p_metadata": pack(metadata),
            "p_request": request.SerializeToString(),
            "p_request_id": request_id,
            "p_attempt": attempt,
            "p_created_at": now,
            "p_updated_at": now,
        }
        statement = _CREATE_ALWAYS if request_id is None else _CREATE_ONCE
        row = (await session.execute(statement, values)).one_or_none()
        if row is not None:
            return row, True
        existing = (
            await session.execute(
                _BY_REQUEST_ID, {"p_tenant_id": tenant_id, "p_request_id": request_id}
            )
        ).one()
        return existing, False

    @staticmethod
    async def find_by_request_id(
        session: AsyncSession, *, tenant_id: str, request_id: str
    ) -> operations_pb2.Operation | None:
        """The tenant's operation created with this idempotency key."""
        row = (
            await session.execute(
                _BY_REQUEST_ID, {"p_tenant_id": tenant_id, "p_request_id": request_id}
            )
        ).one_or_none()
        return None if row is None else to_proto(row)

    @staticmethod
    async def row(session: AsyncSession, *, tenant_id: str, name: str, lock: bool = False) -> Any:
        """The tenant's operation row (locked ``FOR UPDATE`` when ``lock``).

        Raises:
            NotFound: Missing, malformed, or another tenant's.
        """
        parse_name(name)
        statement = _BY_NAME_LOCKED if lock else _BY_NAME
        row = (
            await session.execute(statement, {"p_tenant_id": tenant_id, "p_name": name})
        ).one_or_none()
        if row is None:
            raise NotFound(f"operation {name!r} not found")
        return row

    @staticmethod
    async def notify(session: AsyncSession, name: str) -> None:
        """Tell waiters and watchers (after commit) that the operation changed."""
        await session.execute(select(func.pg_notify(OPERATIONS_CHANNEL, name)))

    @staticmethod
    async def update_row(session: AsyncSession, *, name: str, values: dict[str, Any]) -> Any:
        """Apply ``values`` to an operation, bump its version, notify; returns the new row."""
        row = (
            await session.execute(
                update(o)
                .where(o.c.name == name)
                .values(**values, version=o.c.version + 1)
                .returning(o)
            )
        ).one()
        await OperationStore.notify(session, name)
        return row

    @staticmethod
    async def delete_done(session: AsyncSession, *, tenant_id: str, name: str) -> None:
        """Delete a finished operation of the tenant.

        Raises:
            NotFound: Missing or another tenant's.
            FailedPrecondition: Still running.
        """
        row = await OperationStore.row(session, tenant_id=tenant_id, name=name, lock=True)
        if not row.done:
            raise FailedPrecondition(
                f"operation {name!r} is still running; cancel it (CancelOperation) or wait "
                "for it to finish before deleting it",
                reason="OPERATION_RUNNING",
            )
        await session.execute(delete(o).where(o.c.name == name))
        await OperationStore.notify(session, name)

    @staticmethod
    async def progress(
        session: AsyncSession, *, name: str, metadata: Message, now: datetime
    ) -> None:
        """Record new progress metadata."""
        await session.execute(
            update(o)
            .where(o.c.name == name)
            .values(metadata=pack(metadata), updated_at=now, version=o.c.version + 1)
        )
        await OperationStore.notify(session, name)

    @staticmethod
    async def finish(
        session: AsyncSession,
        *,
        name: str,
        now: datetime,
        metadata: Message | None = None,
        response: Message | None = None,
        error: status_pb2.Status | None = None,
    ) -> None:
        """Mark the operation done with its response or error."""
        values: dict[str, Any] = {"done": True, "updated_at": now, "version": o.c.version + 1}
        if metadata is not None:
            values["metadata"] = pack(metadata)
        if response is not None:
            values["response"] = pack(response)
        if error is not None:
            values["error"] = error.SerializeToString()
        await session.execute(update(o).where(o.c.name == name).values(**values))
        await OperationStore.notify(session, name)

    @staticmethod
    async def unfinished(session: AsyncSession, *, kind: str) -> list[Any]:
        """Operations of ``kind`` not done (to resume after a restart)."""
        rows = await session.execute(select(o).where(o.c.kind == kind, o.c.done.is_(False)))
        return list(rows.all())

    @staticmethod
    async def retry(session: AsyncSession, *, name: str, now: datetime) -> None:
        """Count another attempt of an operation."""
        await session.execute(
            update(o)
            .where(o.c.name == name)
            .values(attempt=o.c.attempt + 1, updated_at=now, version=o.c.version + 1)
        )
