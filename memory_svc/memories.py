"""Memories and their revisions: create, read, list, update, delete, rollback and purge.

The write path, for every mutation:

1. validate the whole request (nothing is embedded or written for a bad one);
2. embed the new fact, batched with concurrent writes, *before* the transaction opens;
3. commit the row and its revision in one transaction (the row marked ``index_dirty``);
4. write the vector index, so the change is searchable when the RPC returns
   (:class:`~memory_svc.indexing.IndexSync` retries it later if that fails).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ciq_runtime.db import transaction
from ciq_runtime.errors import Aborted, InvalidArgument, NotFound
from ciq_runtime.pagination import encode_page_token, page_request
from contextiq.memory.v1 import memory_pb2, memory_service_pb2
from memory_svc import models, repository, validation
from memory_svc.backend import Backend
from memory_svc.banks import BankConfig
from memory_svc.convert import etag_of, memory_from_row, revision_from_row
from memory_svc.filters import list_filter, purge_filter
from memory_svc.indexing import Upsert, vector_bytes, vector_of
from memory_svc.scopes import scope_key

__all__ = ["MAX_BATCH_CREATE", "MemoryOps"]

m = models.memories
r = models.memory_revisions

_ORDERS: Final = {
    "": ("updated_at", True),
    "updated_at desc": ("updated_at", True),
    "updated_at asc": ("updated_at", False),
    "updated_at": ("updated_at", False),
    "created_at desc": ("created_at", True),
    "created_at asc": ("created_at", False),
    "created_at": ("created_at", False),
}
#: Most memories one BatchCreateMemories call creates.
MAX_BATCH_CREATE: Final = 1000
_PURGE_BATCH: Final = 500
_PURGE_SAMPLE: Final = 100


def _check_etag(row: Any, etag: str) -> None:
    if etag and etag != etag_of(row.id, row.version):
        raise Aborted(
            "the memory changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"memory_id": str(row.id)},
        )


def _insert_values(
    tenant_id: str, bank: BankConfig, new: validation.NewMemory, vector: Any, *, now: datetime
) -> dict[str, Any]:
    """Every column of a new memory's row."""
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "bank_id": bank.id,
        "scope": new.scope,
        "scope_key": scope_key(new.scope),
        "fact": new.fact,
        "topic": new.topic,
        "confidence": new.confidence,
        "metadata": new.metadata,
        "source_session_id": new.source_session_id,
        "source_event_ids": new.source_event_ids,
        "created_at": now,
        "updated_at": now,
        "expires_at": new.expires_at,
        "version": 1,
        "revision_count": 1 if bank.enable_revisions else 0,
        "request_id": new.request_id,
        "embedding": vector_bytes(vector),
        "embedding_model": bank.embedding_model,
        "index_dirty": True,
        "deleted_at": None,
    }


class MemoryOps:
    """The memory operations behind MemoryService."""

    def __init__(self, backend: Backend) -> None:
        """Bind to the service's resources."""
        self._b = backend

    # ------------------------------------------------------------------ create

    async def create(
        self, tenant_id: str, request: memory_service_pb2.CreateMemoryRequest
    ) -> memory_pb2.Memory:
        """CreateMemory: idempotent on ``request_id``."""
        b = self._b
        bank = await b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        now = b.clock()
        new = validation.validate_create(request, bank, now=now)
        bank.require_indexed()
        if new.request_id is not None:
            async with b.sessions() as session:
                existing = await repository.find_by_request_id(
                    session, tenant_id=tenant_id, request_id=new.request_id
                )
            if existing is not None:
                return memory_from_row(existing)
        vector = (await b.embed(bank.embedding_model, [new.fact]))[0]
        row, inserted = await self._insert(tenant_id, bank, new, vector, now=now)
        if inserted:
            await b.sync.apply(upserts=[Upsert(row, vector)])
        return memory_from_row(row)

    async def batch_create(
        self, tenant_id: str, request: memory_service_pb2.BatchCreateMemoriesRequest
    ) -> memory_service_pb2.BatchCreateMemoriesResponse:
        """BatchCreateMemories: every request validated, the facts embedded together, every
        row and revision written in one transaction, then the index in one batch.

        A request whose ``request_id`` already created a memory answers with that memory
        (AIP-155, as CreateMemory); the others are created.
        """
        b = self._b
        items = list(request.requests)
        if not items:
            raise InvalidArgument("requests must hold at least one memory", field="requests")
        if len(items) > MAX_BATCH_CREATE:
            raise InvalidArgument(
                f"requests holds {len(items)} memories; at most {MAX_BATCH_CREATE} per call",
                field="requests",
            )
        bank_id = items[0].bank_id
        for i, item in enumerate(items):
            if item.bank_id != bank_id:
                raise InvalidArgument(
                    f"every request of a batch names the same bank: {item.bank_id!r} differs "
                    f"from {bank_id!r} of requests[0]",
                    field=f"requests[{i}].bank_id",
                )
        bank = await b.bank(tenant_id=tenant_id, bank_id=bank_id, field="requests[0].bank_id")
        now = b.clock()
        new: list[validation.NewMemory] = []
        first_of: dict[str, int] = {}
        for i, item in enumerate(items):
            try:
                new.append(validation.validate_create(item, bank, now=now))
            except InvalidArgument as exc:
                raise InvalidArgument(
                    exc.message, field=f"requests[{i}].{exc.field}", reason=exc.reason
                ) from exc
            key = new[-1].request_id
            if key is not None:
                if key in first_of:
                    raise InvalidArgument(
                        f"request_id {key!r} is also the request_id of requests[{first_of[key]}]",
                        field=f"requests[{i}].request_id",
                    )
                first_of[key] = i
        bank.require_indexed()
        rows: list[Any] = [None] * len(items)
        if first_of:
            async with b.sessions() as session:
                for row in await repository.find_by_request_ids(
                    session, tenant_id=tenant_id, request_ids=list(first_of)
                ):
                    rows[first_of[row.request_id]] = row
        todo = [i for i, row in enumerate(rows) if row is None]
        vectors = list(await b.embed(bank.embedding_model, [new[i].fact for i in todo]))
        values = [
            _insert_values(tenant_id, bank, new[i], vector, now=now)
            for i, vector in zip(todo, vectors, strict=True)
        ]
        vector_of_id = {row["id"]: vector for row, vector in zip(values, vectors, strict=True)}
        position = {row["id"]: i for i, row in zip(todo, values, strict=True)}
        async with transaction(b.sessions) as session:
            inserted = await repository.insert_memories(
                session, values, revision=bank.enable_revisions
            )
            for row in inserted:
                rows[position[row.id]] = row
            lost = {new[i].request_id: i for i in todo if rows[i] is None}
            if lost:
                # Concurrent calls with these request_ids committed first (the inserts waited
                # for them): answer with their memories.
                for row in await repository.find_by_request_ids(
                    session, tenant_id=tenant_id, request_ids=[k for k in lost if k]
                ):
                    rows[lost[row.request_id]] = row
        upserts = [Upsert(row, vector_of_id[row.id]) for row in inserted]
        if upserts:
            await b.sync.apply(upserts=upserts)
        return memory_service_pb2.BatchCreateMemoriesResponse(
            memories=[memory_from_row(row) for row in rows]
        )

    async def _insert(
        self,
        tenant_id: str,
        bank: BankConfig,
        new: validation.NewMemory,
        vector: Any,
        *,
        now: datetime,
    ) -> tuple[Any, bool]:
        statement = repository.insert_memory_statement(revision=bank.enable_revisions)
        values = _insert_values(tenant_id, bank, new, vector, now=now)
        async with self._b.autocommit() as connection:
            row = (await connection.execute(statement, values)).one_or_none()
            if row is None:
                # A concurrent retry with the same request_id won the insert: return its row.
                assert new.request_id is not None
                existing = (
                    await connection.execute(
                        select(*repository.PUBLIC_COLUMNS).where(
                            m.c.tenant_id == tenant_id, m.c.request_id == new.request_id
                        )
                    )
                ).one()
                return existing, False
        return row, True

    # ------------------------------------------------------------------ read

    async def get(self, tenant_id: str, memory_id: str) -> memory_pb2.Memory:
        """GetMemory."""
        parsed = validation.parse_memory_id(memory_id)
        async with self._b.sessions() as session:
            row = await repository.get_memory(
                session, tenant_id=tenant_id, memory_id=parsed, now=self._b.clock()
            )
        if row is None:
            raise NotFound(f"memory {memory_id!r} not found")
        return memory_from_row(row)

    async def list_memories(
        self, tenant_id: str, request: memory_service_pb2.ListMemoriesRequest
    ) -> memory_service_pb2.ListMemoriesResponse:
        """ListMemories, optionally as of a past time."""
        bank = await self._b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        normalized = " ".join(request.order_by.lower().split())
        if normalized not in _ORDERS:
            raise InvalidArgument(
                "order_by must be one of " + ", ".join(repr(k) for k in _ORDERS if k),
                field="order_by",
            )
        column_name, descending = _ORDERS[normalized]
        as_of = (
            request.as_of.ToDatetime(tzinfo=self._b.clock().tzinfo)
            if request.HasField("as_of")
            else None
        )
        if as_of is not None:
            table = repository.revisions_as_of(tenant_id=tenant_id, bank_id=bank.id, as_of=as_of)
            visible = repository.snapshot_alive(table, as_of)
        else:
            table = m
            visible = repository.alive(self._b.clock())
        where = list_filter(request.filter, table)
        params = {
            "filter": request.filter,
            "order_by": normalized,
            "as_of": as_of.isoformat() if as_of else "",
            "bank_id": bank.id,
        }
        page = page_request(
            page_size=request.page_size, page_token=request.page_token, params=params
        )
        column = table.c[column_name]
        statement = select(*(table.c if as_of is not None else repository.PUBLIC_COLUMNS)).where(
            visible, where
        )
        if as_of is None:
            statement = statement.where(m.c.tenant_id == tenant_id, m.c.bank_id == bank.id)
        if page.after is not None:
            after = _after_key(page.after)
            key = (column, table.c.id)
            statement = statement.where(
                func.row(*key) < func.row(*after)
                if descending
                else func.row(*key) > func.row(*after)
            )
        order = [column.desc(), table.c.id.desc()] if descending else [column, table.c.id]
        statement = statement.order_by(*order).limit(page.size + 1)
        async with self._b.sessions() as session:
            rows = (await session.execute(statement)).all()
        response = memory_service_pb2.ListMemoriesResponse(
            memories=[memory_from_row(row) for row in rows[: page.size]]
        )
        if len(rows) > page.size:
            last = rows[page.size - 1]
            response.next_page_token = encode_page_token(
                last_sort_key=[getattr(last, column_name).isoformat(), str(last.id)], params=params
            )
        return response

    # ------------------------------------------------------------------ update / delete

    async def update(
        self, tenant_id: str, request: memory_service_pb2.UpdateMemoryRequest
    ) -> memory_pb2.Memory:
        """UpdateMemory (PATCH with update_mask and etag)."""
        b = self._b
        memory_id = validation.parse_memory_id(request.memory.id, field="memory.id")
        async with b.sessions() as session:
            current = await repository.get_memory(
                session, tenant_id=tenant_id, memory_id=memory_id, now=b.clock()
            )
        if current is None:
            raise NotFound(f"memory {request.memory.id!r} not found")
        # IMMUTABLE fields may be echoed back unchanged (a read-modify-write body), not changed.
        if request.memory.scope and dict(request.memory.scope) != current.scope:
            raise InvalidArgument("scope cannot be changed", field="memory.scope")
        if request.memory.bank_id and request.memory.bank_id != current.bank_id:
            raise InvalidArgument("bank_id cannot be changed", field="memory.bank_id")
        bank = await b.bank(tenant_id=tenant_id, bank_id=current.bank_id)
        now = b.clock()
        changes = validation.validate_update(request, bank, now=now)
        bank.require_indexed()
        new_vector = (
            (await b.embed(bank.embedding_model, [changes.fact]))[0]
            if changes.fact is not None and changes.fact != current.fact
            else None
        )
        async with transaction(b.sessions) as session:
            row = await repository.lock_memory(
                session, tenant_id=tenant_id, memory_id=memory_id, with_embedding=True
            )
            if row is None or not _visible(row, now):
                raise NotFound(f"memory {request.memory.id!r} not found")
            _check_etag(row, request.etag)
            values: dict[str, Any] = {name: getattr(changes, name) for name in changes.fields}
            values["updated_at"] = now
            if new_vector is not None and values.get("fact") != row.fact:
                values["embedding"] = vector_bytes(new_vector)
                values["embedding_model"] = bank.embedding_model
            if bank.enable_revisions:
                values["revision_count"] = row.revision_count + 1
            updated = await repository.update_memory(
                session, tenant_id=tenant_id, memory_id=memory_id, values=values
            )
            if bank.enable_revisions:
                await repository.insert_revision(session, row=updated, action="UPDATED", now=now)
        vector = new_vector if new_vector is not None and "embedding" in values else None
        if vector is None:
            vector = vector_of(row.embedding)
        await b.sync.apply(upserts=[Upsert(updated, vector)])
        return memory_from_row(updated)

    async def delete(self, tenant_id: str, request: memory_service_pb2.DeleteMemoryRequest) -> None:
        """DeleteMemory: soft delete with a DELETED revision; the history stays."""
        b = self._b
        memory_id = validation.parse_memory_id(request.id)
        now = b.clock()
        async with b.sessions() as session:
            current = await repository.get_memory(
                session, tenant_id=tenant_id, memory_id=memory_id, now=now
            )
        if current is None:
            raise NotFound(f"memory {request.id!r} not found")
        bank = await b.bank(tenant_id=tenant_id, bank_id=current.bank_id)
        revisions = bank.enable_revisions
        async with transaction(b.sessions) as session:
            row = await repository.lock_memory(session, tenant_id=tenant_id, memory_id=memory_id)
            if row is None or not _visible(row, now):
                raise NotFound(f"memory {request.id!r} not found")
            _check_etag(row, request.etag)
            values: dict[str, Any] = {"deleted_at": now, "updated_at": now}
            if revisions:
                values["revision_count"] = row.revision_count + 1
            deleted = await repository.update_memory(
                session, tenant_id=tenant_id, memory_id=memory_id, values=values
            )
            if revisions:
                await repository.insert_revision(session, row=deleted, action="DELETED", now=now)
        await b.sync.apply(deletes=[deleted])

    # ------------------------------------------------------------------ revisions

    async def list_revisions(
        self, tenant_id: str, request: memory_service_pb2.ListMemoryRevisionsRequest
    ) -> memory_service_pb2.ListMemoryRevisionsResponse:
        """ListMemoryRevisions, newest first; works for deleted memories too."""
        memory_id = validation.parse_memory_id(request.memory_id, field="memory_id")
        params = {"memory_id": str(memory_id)}
        page = page_request(
            page_size=request.page_size, page_token=request.page_token, params=params
        )
        statement = select(r).where(r.c.tenant_id == tenant_id, r.c.memory_id == memory_id)
        if page.after is not None:
            if len(page.after) != 1 or not isinstance(page.after[0], int):
                raise InvalidArgument("page_token is malformed", field="page_token")
            statement = statement.where(r.c.revision_number < page.after[0])
        statement = statement.order_by(r.c.revision_number.desc()).limit(page.size + 1)
        async with self._b.sessions() as session:
            rows = (await session.execute(statement)).all()
            if not rows and page.after is None:
                await self._require_memory(session, tenant_id=tenant_id, memory_id=memory_id)
        response = memory_service_pb2.ListMemoryRevisionsResponse(
            revisions=[revision_from_row(row) for row in rows[: page.size]]
        )
        if len(rows) > page.size:
            response.next_page_token = encode_page_token(
                last_sort_key=[rows[page.size - 1].revision_number], params=params
            )
        return response

    async def _require_memory(
        self, session: AsyncSession, *, tenant_id: str, memory_id: uuid.UUID
    ) -> None:
        exists = await session.scalar(
            select(func.count())
            .select_from(m)
            .where(m.c.tenant_id == tenant_id, m.c.id == memory_id)
        )
        if not exists:
            raise NotFound(f"memory {memory_id} not found")

    async def get_revision(
        self, tenant_id: str, request: memory_service_pb2.GetMemoryRevisionRequest
    ) -> memory_pb2.MemoryRevision:
        """GetMemoryRevision."""
        memory_id = validation.parse_memory_id(request.memory_id, field="memory_id")
        row = await self._revision(tenant_id, memory_id, request.revision_number)
        return revision_from_row(row)

    async def _revision(self, tenant_id: str, memory_id: uuid.UUID, number: int) -> Any:
        if number <= 0:
            raise InvalidArgument("revision_number must be positive", field="revision_number")
        async with self._b.sessions() as session:
            row = (
                await session.execute(
                    select(r).where(
                        r.c.tenant_id == tenant_id,
                        r.c.memory_id == memory_id,
                        r.c.revision_number == number,
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"revision {number} of memory {memory_id} not found")
        return row

    async def rollback(
        self, tenant_id: str, request: memory_service_pb2.RollbackMemoryRequest
    ) -> memory_pb2.Memory:
        """RollbackMemory: restore a revision's content as a new ROLLED_BACK revision.

        A deleted memory comes back. The restored expiration is the revision's; a memory
        whose TTL already ran out was purged by the sweeper and cannot be rolled back.
        """
        b = self._b
        memory_id = validation.parse_memory_id(request.id)
        target = await self._revision(tenant_id, memory_id, request.revision_number)
        bank = await b.bank(tenant_id=tenant_id, bank_id=target.bank_id)
        bank.require_indexed()
        vector = (await b.embed(bank.embedding_model, [target.fact]))[0]
        now = b.clock()
        async with transaction(b.sessions) as session:
            row = await repository.lock_memory(session, tenant_id=tenant_id, memory_id=memory_id)
            if row is None:
                raise NotFound(f"memory {request.id!r} not found")
            _check_etag(row, request.etag)
            restored = await repository.update_memory(
                session,
                tenant_id=tenant_id,
                memory_id=memory_id,
                values={
                    "fact": target.fact,
                    "topic": target.topic,
                    "confidence": target.confidence,
                    "metadata": target.metadata,
                    "expires_at": target.expires_at,
                    "source_session_id": target.source_session_id,
                    "source_event_ids": target.source_event_ids,
                    "deleted_at": None,
                    "updated_at": now,
                    "embedding": vector_bytes(vector),
                    "embedding_model": bank.embedding_model,
                    "revision_count": row.revision_count + 1,
                },
            )
            await repository.insert_revision(
                session,
                row=restored,
                action="ROLLED_BACK",
                now=now,
                rolled_back_to=target.revision_number,
            )
        if _visible(restored, now):
            await b.sync.apply(upserts=[Upsert(restored, vector)])
        else:
            await b.sync.apply(deletes=[restored])
        return memory_from_row(restored)

    # ------------------------------------------------------------------ purge

    async def purge(
        self, tenant_id: str, request: memory_service_pb2.PurgeMemoriesRequest
    ) -> memory_service_pb2.PurgeMemoriesResponse:
        """PurgeMemories: dry run unless ``force``; deletes in batches with revisions."""
        b = self._b
        bank = await b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        where = purge_filter(request.filter, m)
        now = b.clock()
        base = select(m.c.id).where(
            m.c.tenant_id == tenant_id, m.c.bank_id == bank.id, repository.alive(now), where
        )
        if not request.force:
            async with b.sessions() as session:
                count = await repository.count_matching(
                    session, tenant_id=tenant_id, bank_id=bank.id, now=now, where=where
                )
                sample = (await session.execute(base.order_by(m.c.id).limit(_PURGE_SAMPLE))).all()
            return memory_service_pb2.PurgeMemoriesResponse(
                purge_count=count, memory_ids=[str(row.id) for row in sample], purged=False
            )
        total = 0
        sample_ids: list[str] = []
        while True:
            async with transaction(b.sessions) as session:
                ids = [
                    row.id
                    for row in (
                        await session.execute(
                            base.limit(_PURGE_BATCH).with_for_update(skip_locked=True)
                        )
                    ).all()
                ]
                if not ids:
                    break
                deleted = await self._delete_many(session, tenant_id, ids, bank, now)
            await b.sync.apply(deletes=deleted)
            total += len(deleted)
            sample_ids.extend(str(row.id) for row in deleted[: _PURGE_SAMPLE - len(sample_ids)])
        return memory_service_pb2.PurgeMemoriesResponse(
            purge_count=total, memory_ids=sample_ids, purged=total > 0
        )

    async def _delete_many(
        self,
        session: AsyncSession,
        tenant_id: str,
        ids: Sequence[uuid.UUID],
        bank: BankConfig,
        now: datetime,
    ) -> list[Any]:
        increment = 1 if bank.enable_revisions else 0
        rows = (
            await session.execute(
                update(m)
                .where(m.c.tenant_id == tenant_id, m.c.id.in_(list(ids)))
                .values(
                    deleted_at=now,
                    updated_at=now,
                    version=m.c.version + 1,
                    revision_count=m.c.revision_count + increment,
                    index_dirty=True,
                )
                .returning(*repository.PUBLIC_COLUMNS)
            )
        ).all()
        if bank.enable_revisions and rows:
            await repository.insert_revisions_of(
                session,
                tenant_id=tenant_id,
                ids=[row.id for row in rows],
                action="DELETED",
                now=now,
                reason="purged",
            )
        return list(rows)


def _visible(row: Any, now: datetime) -> bool:
    return row.deleted_at is None and (row.expires_at is None or row.expires_at > now)


def _after_key(after: list[Any]) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, memory_id = after
        return datetime.fromisoformat(stamp), uuid.UUID(memory_id)
    except (TypeError, ValueError):
        raise InvalidArgument("page_token is malformed", field="page_token") from None
