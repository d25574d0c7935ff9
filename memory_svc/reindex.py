"""ReindexMemories: rebuild a bank's part of the vector index from Postgres.

Runs as a long-running operation in the memory process. For each batch of the bank's visible
memories it (re-)embeds the facts whose stored embedding is missing or of another model,
stores the new embeddings, and upserts the points -- holding the rows ``FOR SHARE`` meanwhile,
so a concurrent update waits and then writes its newer point after ours. Afterwards, points
the index holds for the bank but Postgres does not (deleted, expired, or left over by a lost
write) are removed, and after a model change the old collection's points of the bank are
dropped and the bank switches to the new model (writes and searches work again).

An operation interrupted by a restart is resumed on start: every step is idempotent.

Reindexing a tenant's default bank also rebuilds the tenant's procedural objects (workflows,
skills, trajectories), the other part of the index derived from Postgres (the component sets
``Reindexer.also_rebuild``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2
from sqlalchemy import select, true, update

from ciq_runtime.db import transaction
from ciq_runtime.errors import ContextIQError
from contextiq.memory.v1 import memory_service_pb2
from memory_svc import banks, models, repository
from memory_svc.backend import Backend
from memory_svc.index.protocol import collection_name
from memory_svc.indexing import vector_bytes, vector_of
from memory_svc.operations import OperationStore

__all__ = ["Reindexer"]

log = logging.getLogger(__name__)

m = models.memories
KIND: Final = "reindex"
_BATCH: Final = 256


class Reindexer:
    """Starts and runs reindex operations."""

    def __init__(self, backend: Backend) -> None:
        """Bind to the service's resources."""
        self._b = backend
        self._tasks: set[asyncio.Task[None]] = set()
        #: Rebuilds a tenant's other derived points when its default bank is reindexed.
        self.also_rebuild: Callable[[str], Awaitable[int]] | None = None

    async def start(
        self, tenant_id: str, request: memory_service_pb2.ReindexMemoriesRequest
    ) -> operations_pb2.Operation:
        """Record the operation and run it in the background."""
        b = self._b
        bank = await b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        now = b.clock()
        async with transaction(b.sessions) as session:
            total = await repository.count_matching(
                session, tenant_id=tenant_id, bank_id=bank.id, now=now, where=true()
            )
            operation = await OperationStore.create(
                session,
                tenant_id=tenant_id,
                kind=KIND,
                bank_id=bank.id,
                metadata=memory_service_pb2.ReindexMemoriesMetadata(total_count=total),
                request=memory_service_pb2.ReindexMemoriesRequest(bank_id=bank.id),
                now=now,
            )
        self._spawn(operation.name, tenant_id, bank.id)
        return operation

    def _spawn(self, name: str, tenant_id: str, bank_id: str) -> None:
        task = asyncio.create_task(self._run(name, tenant_id, bank_id), name=f"reindex {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Restart reindex operations a previous process left unfinished."""
        async with transaction(self._b.sessions) as session:
            rows = await OperationStore.unfinished(session, kind=KIND)
            for row in rows:
                await OperationStore.retry(session, name=row.name, now=self._b.clock())
        for row in rows:
            log.info("resuming %s", row.name)
            self._spawn(row.name, row.tenant_id, row.bank_id)

    async def wait(self) -> None:
        """Wait for every running reindex (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        """Cancel running reindexes; they resume on the next start."""
        for task in list(self._tasks):
            task.cancel()
        await self.wait()

    async def _run(self, name: str, tenant_id: str, bank_id: str) -> None:
        b = self._b
        try:
            indexed = await self._rebuild(name, tenant_id, bank_id)
            if self.also_rebuild is not None and bank_id == banks.DEFAULT_BANK:
                await self.also_rebuild(tenant_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("reindex %s failed", name)
            code = exc.code.value[0] if isinstance(exc, ContextIQError) else code_pb2.INTERNAL
            async with transaction(b.sessions) as session:
                await OperationStore.finish(
                    session,
                    name=name,
                    now=b.clock(),
                    error=status_pb2.Status(code=code, message=f"reindex failed: {exc}"),
                )
            return
        async with transaction(b.sessions) as session:
            await OperationStore.finish(
                session,
                name=name,
                now=b.clock(),
                metadata=memory_service_pb2.ReindexMemoriesMetadata(
                    indexed_count=indexed, total_count=indexed
                ),
                response=memory_service_pb2.ReindexMemoriesResponse(indexed_count=indexed),
            )

    async def _rebuild(self, name: str, tenant_id: str, bank_id: str) -> int:
        b = self._b
        async with b.sessions() as session:
            bank = await b.banks.find(session, tenant_id=tenant_id, bank_id=bank_id, fresh=True)
        if bank is None:
            raise ContextIQError(f"memory bank {bank_id!r} no longer exists")
        model = bank.embedding_model
        embedder = b.embedders.get(model)
        dimension = await embedder.dimension()
        collection = await b.sync.collection(model, dimension)
        before = await b.sync.index.point_ids(collection, tenant_id=tenant_id, bank_id=bank_id)
        async with b.sessions() as session:
            total = await repository.count_matching(
                session,
                tenant_id=tenant_id,
                bank_id=bank_id,
                now=b.clock(),
                where=true(),
            )
        live: set[uuid.UUID] = set()
        after: uuid.UUID | None = None
        indexed = 0
        while True:
            now = b.clock()
            async with transaction(b.sessions) as session:
                statement = (
                    select(*repository.PUBLIC_COLUMNS, m.c.embedding)
                    .where(
                        m.c.tenant_id == tenant_id,
                        m.c.bank_id == bank_id,
                        repository.alive(now),
                    )
                    .order_by(m.c.id)
                    .limit(_BATCH)
                    .with_for_update(read=True)
                )
                if after is not None:
                    statement = statement.where(m.c.id > after)
                rows = (await session.execute(statement)).all()
                if not rows:
                    break
                after = rows[-1].id
                stale = [
                    row for row in rows if row.embedding is None or row.embedding_model != model
                ]
                stale_ids = {row.id for row in stale}
                fresh = await embedder.embed([row.fact for row in stale]) if stale else None
                vectors = {
                    row.id: vector_of(row.embedding) for row in rows if row.id not in stale_ids
                }
                for i, row in enumerate(stale):
                    assert fresh is not None
                    vectors[row.id] = fresh[i]
                    await session.execute(
                        update(m)
                        .where(m.c.id == row.id)
                        .values(embedding=vector_bytes(fresh[i]), embedding_model=model)
                    )
                points = [b.sync.point(row, vectors[row.id]) for row in rows]
                await b.sync.index.upsert(collection, points)
                live.update(row.id for row in rows)
                indexed += len(rows)
                await _progress(session, name, indexed, max(total, indexed), now)
        gone = before - live
        if gone:
            still = await _existing_visible(b, tenant_id, gone)
            await b.sync.index.delete(collection, sorted(gone - still))
        if bank.indexed_model != model:
            old_dimension = await b.embedders.get(bank.indexed_model).dimension()
            old = collection_name(bank.indexed_model, old_dimension)
            if old != collection:
                await b.sync.index.ensure_collection(old, old_dimension)
                await b.sync.index.delete_bank(old, tenant_id=tenant_id, bank_id=bank_id)
            async with transaction(b.sessions) as session:
                await banks.set_indexed_model(
                    session, tenant_id=tenant_id, bank_id=bank_id, model=model, dimension=dimension
                )
            b.banks.invalidate(tenant_id, bank_id)
        return indexed


async def _progress(session: Any, name: str, indexed: int, total: int, now: Any) -> None:
    metadata = memory_service_pb2.ReindexMemoriesMetadata(indexed_count=indexed, total_count=total)
    await OperationStore.progress(session, name=name, metadata=metadata, now=now)


async def _existing_visible(b: Backend, tenant_id: str, ids: set[uuid.UUID]) -> set[uuid.UUID]:
    # Created while the rebuild ran: their own write indexed them; keep them.
    async with b.sessions() as session:
        rows = await session.execute(
            select(m.c.id).where(
                m.c.tenant_id == tenant_id, m.c.id.in_(list(ids)), repository.alive(b.clock())
            )
        )
        return {row.id for row in rows}
