"""Keeping the procedural part of the vector index in step with Postgres.

Procedural objects live in their own collection per embedding model
(``procedural_<model>_<dimension>``), next to the memory collections of the same index
(embedded engine or Qdrant server), with the same point layout: dense vector, BM25 sparse
vector of the object's search text, and the payload fields the memory index already indexes.
``bank_id`` is the constant ``"procedural"``, ``topic`` tells the kinds apart
(``workflow``, ``trajectory``, ``skill:<skill_type>``) and a skill's ``rank`` is its success
rate, so kind, skill-type and success-rate filters run inside the index.

The write path is the memory service's: commit the row with ``index_dirty`` set, write the
index before the RPC returns (searchable once acknowledged), clear the flag. A failed index
write leaves the flag set and :meth:`ProceduralIndex.repair` re-applies the row later;
searches re-read every hit from Postgres, so a stale point is never returned.
:meth:`ProceduralIndex.rebuild` rebuilds a tenant's (or every tenant's) points from Postgres.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import Table, select, update

from ciq_runtime.db import transaction
from memory_svc.backend import Backend
from memory_svc.embeddings import Vectors
from memory_svc.index.protocol import NEVER, IndexPoint, collection_name
from memory_svc.indexing import vector_bytes, vector_of
from memory_svc.keyword import KeywordEncoder
from memory_svc.procedural import models
from memory_svc.procedural.convert import search_text
from memory_svc.scopes import pair_tokens

__all__ = ["BANK", "TABLES", "ProceduralIndex", "Upsert", "topic_of"]

log = logging.getLogger(__name__)

BANK: Final = "procedural"
TABLES: Final[dict[str, Table]] = {
    "workflow": models.workflows,
    "skill": models.skills,
    "trajectory": models.trajectories,
}
_BATCH: Final = 512


def topic_of(kind: str, skill_type: str = "") -> str:
    """The index ``topic`` of an object: its kind, and for skills their type."""
    return f"skill:{skill_type}" if kind == "skill" else kind


@dataclass(frozen=True, slots=True)
class Upsert:
    """A row of one kind to (re-)index with its embedding."""

    kind: str
    row: Any
    vector: Vectors


class ProceduralIndex:
    """Writes procedural rows to the index and records which rows it holds."""

    def __init__(
        self,
        backend: Backend,
        *,
        sessions: Any,
        repair_after: timedelta = timedelta(seconds=10),
    ) -> None:
        """Create the writer.

        Args:
            backend: The memory service's resources (embedders, index, clock).
            sessions: Returns the ``procedural`` schema's session factory (once started).
            repair_after: Dirty rows younger than this belong to writes in flight.
        """
        self._b = backend
        self._sessions = sessions
        self._repair_after = repair_after
        # Procedural texts are a few sentences, not one: a longer average length for BM25's
        # length normalisation.
        self.keyword = KeywordEncoder(avg_len=48.0)

    @property
    def model(self) -> str:
        """The embedding model of procedural objects: the service's default model."""
        return self._b.banks.default.embedding_model

    async def collection(self) -> str:
        """The (open) collection of procedural points under the current model."""
        dimension = await self._b.embedders.get(self.model).dimension()
        name = "procedural_" + collection_name(self.model, dimension).removeprefix("memories_")
        await self._b.sync.index.ensure_collection(name, dimension)
        return name

    async def embed(self, texts: list[str]) -> Vectors:
        """Embed search texts with the current model."""
        return await self._b.embed(self.model, texts)

    def point(self, kind: str, row: Any, vector: Vectors) -> IndexPoint:
        """The index point of a row of ``kind``."""
        return IndexPoint(
            id=row.id,
            dense=vector,
            sparse=self.keyword.document(search_text(kind, dict(row._mapping))),
            tenant_id=row.tenant_id,
            bank_id=BANK,
            scope_key=row.scope_key,
            scope_pairs=pair_tokens(row.scope),
            topic=topic_of(kind, getattr(row, "skill_type", "")),
            created_at=row.created_at.timestamp(),
            updated_at=row.updated_at.timestamp(),
            expires_at=NEVER,
            # A skill's success rate, so that min_success_rate filters inside the index.
            rank=float(row.success_rate) if kind == "skill" else 0.0,
        )

    async def apply(
        self, *, upserts: Sequence[Upsert] = (), deletes: Sequence[uuid.UUID] = ()
    ) -> bool:
        """Write rows to the index (and clear their dirty flag) or remove deleted ones.

        Failures are logged, not raised: the rows are committed and stay dirty, and the
        repair loop retries them (a deleted row's stale point is dropped by searches, which
        re-read hits from Postgres, and by :meth:`rebuild`).

        Returns:
            Whether the index took every change.
        """
        try:
            name = await self.collection()
            if upserts:
                await self._b.sync.index.upsert(
                    name, [self.point(item.kind, item.row, item.vector) for item in upserts]
                )
            if deletes:
                await self._b.sync.index.delete(name, list(deletes))
        except Exception:
            log.warning("procedural index write failed; the repair loop will retry", exc_info=True)
            return False
        if upserts:
            await self._mark_clean(upserts)
        return True

    async def _mark_clean(self, upserts: Sequence[Upsert]) -> None:
        async with transaction(self._sessions()) as session:
            for item in upserts:
                table = TABLES[item.kind]
                await session.execute(
                    update(table)
                    .where(table.c.id == item.row.id, table.c.version == item.row.version)
                    .values(index_dirty=False)
                )

    async def _vectors(self, kind: str, rows: Sequence[Any]) -> list[Upsert]:
        """Upserts of rows, re-embedding those without an embedding of the current model."""
        model = self.model
        stale = [row for row in rows if row.embedding is None or row.embedding_model != model]
        fresh: dict[uuid.UUID, Vectors] = {}
        if stale:
            vectors = await self.embed([search_text(kind, dict(row._mapping)) for row in stale])
            table = TABLES[kind]
            async with transaction(self._sessions()) as session:
                for row, vector in zip(stale, vectors, strict=True):
                    fresh[row.id] = vector
                    await session.execute(
                        update(table)
                        .where(table.c.id == row.id)
                        .values(embedding=vector_bytes(vector), embedding_model=model)
                    )
        return [
            Upsert(kind, row, fresh[row.id] if row.id in fresh else vector_of(row.embedding))
            for row in rows
        ]

    async def repair(self, *, limit: int = 500) -> int:
        """Re-apply dirty rows older than ``repair_after``; returns how many were fixed."""
        now = self._b.clock()
        fixed = 0
        for kind, table in TABLES.items():
            async with self._sessions()() as session:
                rows = (
                    await session.execute(
                        select(table)
                        .where(table.c.index_dirty, table.c.updated_at < now - self._repair_after)
                        .order_by(table.c.updated_at)
                        .limit(limit)
                    )
                ).all()
            if rows and await self.apply(upserts=await self._vectors(kind, rows)):
                fixed += len(rows)
        if fixed:
            log.info("repaired %d procedural index entries", fixed)
        return fixed

    async def rebuild(self, tenant_id: str | None = None) -> int:
        """Rebuild the points of one tenant (every tenant when None) from Postgres.

        Re-indexes every workflow, skill and trajectory in batches (embedding rows whose
        stored vector is missing or of another model), then drops the tenant's points that
        Postgres no longer holds. Searches keep working meanwhile.

        Returns:
            The number of objects indexed.
        """
        name = await self.collection()
        if tenant_id is None:
            tenants: set[str] = set()
            async with self._sessions()() as session:
                for table in TABLES.values():
                    tenants.update(
                        (await session.execute(select(table.c.tenant_id).distinct())).scalars()
                    )
        else:
            tenants = {tenant_id}
        index = self._b.sync.index
        total = 0
        for tenant in sorted(tenants):
            before = await index.point_ids(name, tenant_id=tenant, bank_id=BANK)
            live: set[uuid.UUID] = set()
            for kind, table in TABLES.items():
                after: uuid.UUID | None = None
                while True:
                    statement = select(table).where(table.c.tenant_id == tenant)
                    if after is not None:
                        statement = statement.where(table.c.id > after)
                    statement = statement.order_by(table.c.id).limit(_BATCH)
                    async with self._sessions()() as session:
                        rows = (await session.execute(statement)).all()
                    if not rows:
                        break
                    after = rows[-1].id
                    upserts = await self._vectors(kind, rows)
                    await index.upsert(name, [self.point(u.kind, u.row, u.vector) for u in upserts])
                    await self._mark_clean(upserts)
                    live.update(row.id for row in rows)
                    total += len(rows)
            gone = before - live
            if gone:
                # Objects created while the rebuild ran were indexed by their own write.
                async with self._sessions()() as session:
                    for table in TABLES.values():
                        gone -= set(
                            (
                                await session.execute(
                                    select(table.c.id).where(table.c.id.in_(list(gone)))
                                )
                            ).scalars()
                        )
                await index.delete(name, sorted(gone))
        return total
