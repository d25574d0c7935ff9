"""Long-running operations (AIP-151) stored in ``memory.operations``.

A row holds the operation's packed metadata (progress), and when done its packed response or
its ``google.rpc.Status``. Names are ``operations/<uuid>``; reads are confined to the
caller's tenant, and another tenant's operation is NOT_FOUND like a missing one. The table
carries what the generation issue needs on top (request, request_id, attempt,
cancel_requested, version for watchers).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ciq_runtime.errors import InvalidArgument, NotFound
from ciq_runtime.filtering import FilterField, ValueKind, compile_filter
from ciq_runtime.pagination import encode_page_token, page_request
from memory_svc import models

__all__ = ["OperationStore", "pack"]

o = models.operations
_PREFIX: Final = "operations/"


def pack(message: Message) -> bytes:
    """A message as serialized ``google.protobuf.Any``."""
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed.SerializeToString()


def _to_proto(row: Any) -> operations_pb2.Operation:
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
        return _to_proto(row)

    @staticmethod
    async def get(session: AsyncSession, *, tenant_id: str, name: str) -> operations_pb2.Operation:
        """The tenant's operation.

        Raises:
            NotFound: Missing, malformed, or another tenant's.
        """
        parse_name(name)
        row = (
            await session.execute(select(o).where(o.c.tenant_id == tenant_id, o.c.name == name))
        ).one_or_none()
        if row is None:
            raise NotFound(f"operation {name!r} not found")
        return _to_proto(row)

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
            operations=[_to_proto(row) for row in rows[: page.size]]
        )
        if len(rows) > page.size:
            last = rows[page.size - 1]
            response.next_page_token = encode_page_token(
                last_sort_key=[last.created_at.isoformat(), last.name], params=params
            )
        return response

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
