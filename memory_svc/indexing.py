"""Keeping the vector index in step with Postgres.

The write path commits the row (with ``index_dirty = true``) and then writes the index before
the RPC returns, so a write is searchable once acknowledged. Clearing the flag is batched in
the background. If the index write fails, or the process dies between commit and index write,
the flag stays set and :meth:`IndexSync.repair` (run on start and by the background loop)
re-applies the row's current state. Searches never depend on the index being exact: results
are re-checked against Postgres (:func:`memory_svc.repository.hydrate`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, and_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT, UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ciq_runtime.db import transaction
from memory_svc import models
from memory_svc.embeddings import Vectors
from memory_svc.index.protocol import NEVER, IndexPoint, VectorIndex, collection_name
from memory_svc.keyword import KeywordEncoder
from memory_svc.repository import PUBLIC_COLUMNS, alive
from memory_svc.scopes import pair_tokens

__all__ = ["IndexSync", "vector_bytes", "vector_of"]

log = logging.getLogger(__name__)

m = models.memories


def vector_bytes(vector: Vectors) -> bytes:
    """Storage form of one embedding (float32, little-endian)."""
    return np.asarray(vector, dtype="<f4").tobytes()


def vector_of(data: bytes) -> Vectors:
    """An embedding read back from Postgres."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _epoch(value: datetime | None) -> float:
    return NEVER if value is None else value.timestamp()


@dataclass(frozen=True, slots=True)
class Upsert:
    """A row to (re-)index with its embedding."""

    row: Any
    vector: Vectors


class IndexSync:
    """Writes rows to the index and records which rows the index holds."""

    def __init__(
        self,
        *,
        index: VectorIndex,
        sessions: Callable[[], async_sessionmaker[AsyncSession]],
        keyword: KeywordEncoder,
        repair_after: timedelta = timedelta(seconds=10),
    ) -> None:
        """Create the syncer.

        Args:
            index: The vector index.
            sessions: Returns the Postgres session factory (available once started).
            keyword: BM25 encoder of facts.
            repair_after: Dirty rows younger than this belong to writes still in flight and
                are left to them.
        """
        self._index = index
        self._sessions = sessions
        self._keyword = keyword
        self._repair_after = repair_after
        self._clean: list[tuple[uuid.UUID, int]] = []

    @property
    def index(self) -> VectorIndex:
        """The index."""
        return self._index

    async def collection(self, model: str, dimension: int) -> str:
        """The (open) collection of ``model``'s vectors."""
        name = collection_name(model, dimension)
        await self._index.ensure_collection(name, dimension)
        return name

    def point(self, row: Any, vector: Vectors) -> IndexPoint:
        """The index point of a memory row."""
        return IndexPoint(
            id=row.id,
            dense=vector,
            sparse=self._keyword.document(row.fact),
            tenant_id=row.tenant_id,
            bank_id=row.bank_id,
            scope_key=row.scope_key,
            scope_pairs=pair_tokens(row.scope),
            topic=row.topic,
            created_at=row.created_at.timestamp(),
            updated_at=row.updated_at.timestamp(),
            expires_at=_epoch(row.expires_at),
        )

    async def apply(self, *, upserts: Sequence[Upsert] = (), deletes: Sequence[Any] = ()) -> bool:
        """Write rows to the index (upserts) or remove them (rows deleted or expired).

        Failures are logged, not raised: the rows are committed and stay dirty, and the
        repair loop retries them.

        Returns:
            Whether the index took every change.
        """
        try:
            by_collection: dict[str, list[IndexPoint]] = {}
            for item in upserts:
                name = await self.collection(item.row.embedding_model, len(item.vector))
                by_collection.setdefault(name, []).append(self.point(item.row, item.vector))
            for name, points in by_collection.items():
                await self._index.upsert(name, points)
            gone: dict[str, list[uuid.UUID]] = {}
            for row in deletes:
                if row.embedding_bytes:
                    name = await self.collection(row.embedding_model, row.embedding_bytes // 4)
                    gone.setdefault(name, []).append(row.id)
            for name, ids in gone.items():
                await self._index.delete(name, ids)
        except Exception:
            log.warning("vector index write failed; the repair loop will retry", exc_info=True)
            return False
        self._clean.extend((item.row.id, item.row.version) for item in upserts)
        self._clean.extend((row.id, row.version) for row in deletes)
        return True

    async def flush_clean(self) -> int:
        """Clear ``index_dirty`` of rows the index took (unless they changed since)."""
        if not self._clean:
            return 0
        batch, self._clean = self._clean, []
        ids = [item[0] for item in batch]
        versions = [item[1] for item in batch]
        pairs = select(
            _unnest(ids, "uuid[]").label("id"), _unnest(versions, "bigint[]").label("version")
        ).subquery()
        async with transaction(self._sessions()) as session:
            result = await session.execute(
                update(m)
                .where(and_(m.c.id == pairs.c.id, m.c.version == pairs.c.version))
                .values(index_dirty=False)
            )
        return int(cast("CursorResult[Any]", result).rowcount)

    async def repair(self, *, limit: int = 500) -> int:
        """Re-apply dirty rows older than ``repair_after``; returns how many were fixed."""
        now = datetime.now(UTC)
        async with transaction(self._sessions()) as session:
            rows = (
                await session.execute(
                    select(*PUBLIC_COLUMNS, m.c.embedding, alive(now).label("visible"))
                    .where(m.c.index_dirty, m.c.updated_at < now - self._repair_after)
                    .order_by(m.c.updated_at)
                    .limit(limit)
                )
            ).all()
        if not rows:
            return 0
        upserts = [
            Upsert(row, vector_of(row.embedding))
            for row in rows
            if row.visible and row.embedding is not None
        ]
        deletes = [row for row in rows if not row.visible]
        if await self.apply(upserts=upserts, deletes=deletes):
            await self.flush_clean()
            log.info("repaired %d index entries", len(rows))
            return len(rows)
        return 0


def _unnest(values: list[Any], sql_type: str) -> Any:
    element = UUID(as_uuid=True) if sql_type == "uuid[]" else BIGINT()
    return func.unnest(bindparam(None, values, type_=ARRAY(element)))


async def run_every(interval_s: float, work: Any, *, name: str) -> None:
    """Call ``work()`` every ``interval_s`` seconds until cancelled, logging failures."""
    while True:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s failed; retrying in %.0fs", name, interval_s, exc_info=True)
        await asyncio.sleep(interval_s)
