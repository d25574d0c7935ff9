"""The default vector index: Qdrant's engine in-process (``qdrant-edge-py``).

One edge shard per collection, in ``<root>/<collection>``, with a write-ahead log: an upsert
is durable and searchable when the call returns. Only one process may open a shard directory,
which suits the embedded stack (one memory process); replicas use a Qdrant server instead
(:mod:`memory_svc.index.remote`).

The engine's calls block, so they run in a small thread pool; building HNSW graphs
(:meth:`EdgeIndex.optimize`) runs in its own thread, called by a background loop and never on
the request path.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe

from memory_svc.index.protocol import (
    DENSE,
    SPARSE,
    Hit,
    IndexFilter,
    IndexPoint,
    SearchHits,
    SparseVector,
)

__all__ = ["EdgeIndex"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Payload fields with an index: every search filters on tenant, bank and scope (exact or
# inclusive) and expiry; topic filters are pushed down too.
_KEYWORD_FIELDS = ("bank_id", "scope_key", "scope_pairs", "topic")
_FLOAT_FIELDS = ("expires_at", "created_at", "updated_at", "rank")


def _edge_filter(spec: IndexFilter) -> qe.Filter:
    must: list[Any] = [
        qe.FieldCondition("tenant_id", match=qe.MatchValue(spec.tenant_id)),
        qe.FieldCondition("bank_id", match=qe.MatchValue(spec.bank_id)),
    ]
    if spec.scope_key is not None:
        must.append(qe.FieldCondition("scope_key", match=qe.MatchValue(spec.scope_key)))
    must.extend(
        qe.FieldCondition("scope_pairs", match=qe.MatchValue(token)) for token in spec.scope_pairs
    )
    if spec.alive_at is not None:
        must.append(qe.FieldCondition("expires_at", range=qe.RangeFloat(gt=spec.alive_at)))
    if spec.topics is not None:
        must.append(qe.FieldCondition("topic", match=qe.MatchAny(sorted(spec.topics))))
    if spec.min_rank is not None:
        must.append(qe.FieldCondition("rank", range=qe.RangeFloat(gte=spec.min_rank)))
    if spec.ids is not None:
        must.append(qe.HasIdCondition(set(spec.ids)))
    return qe.Filter(must=must)


def _bank_filter(tenant_id: str, bank_id: str) -> qe.Filter:
    return _edge_filter(IndexFilter(tenant_id=tenant_id, bank_id=bank_id))


class EdgeIndex:
    """:class:`~memory_svc.index.protocol.VectorIndex` over in-process edge shards."""

    def __init__(self, root: Path, *, search_threads: int = 2, hnsw_m: int = 16) -> None:
        """Prepare the index; shards open on :meth:`ensure_collection`.

        Args:
            root: Directory holding one sub-directory per collection.
            search_threads: Threads running engine calls (searches and writes).
            hnsw_m: Edges per HNSW node.
        """
        self._root = root
        self._hnsw_m = hnsw_m
        self._shards: dict[str, qe.EdgeShard] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(search_threads, thread_name_prefix="edge-index")
        self._optimizer = ThreadPoolExecutor(1, thread_name_prefix="edge-optimize")
        self._dirty: set[str] = set()
        self._pending: dict[str, list[tuple[list[IndexPoint], asyncio.Future[None]]]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    async def _call(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is None:
            raise KeyError(f"collection {name!r} is not open: call ensure_collection first")
        return shard

    def _open(self, name: str, dimension: int) -> None:
        with self._lock:
            if name in self._shards:
                return
            path = self._root / name
            config = qe.EdgeConfig(
                vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
                sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
                hnsw_config=qe.HnswIndexConfig(
                    m=self._hnsw_m, ef_construct=100, full_scan_threshold=10_000
                ),
            )
            if (path / "edge_config.json").exists() or (path / "segments").exists():
                shard = qe.EdgeShard.load(str(path))
            else:
                path.mkdir(parents=True, exist_ok=True)
                shard = qe.EdgeShard.create(str(path), config)
                shard.update(
                    qe.UpdateOperation.create_field_index(
                        "tenant_id", qe.KeywordIndexParams(is_tenant=True)
                    )
                )
                for keyword in _KEYWORD_FIELDS:
                    shard.update(
                        qe.UpdateOperation.create_field_index(keyword, qe.PayloadSchemaType.Keyword)
                    )
                for number in _FLOAT_FIELDS:
                    shard.update(
                        qe.UpdateOperation.create_field_index(number, qe.PayloadSchemaType.Float)
                    )
            self._shards[name] = shard

    async def ensure_collection(self, name: str, dimension: int) -> None:
        """Open the collection's shard, creating it with its payload indexes if new."""
        if name not in self._shards:
            await self._call(lambda: self._open(name, dimension))

    async def upsert(self, collection: str, points: Sequence[IndexPoint]) -> None:
        """Insert or replace points; concurrent calls are applied as one engine update."""
        if not points:
            return
        self._shard(collection)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._pending.setdefault(collection, [])
        queue.append((list(points), future))
        if collection not in self._writers or self._writers[collection].done():
            self._writers[collection] = asyncio.create_task(self._write(collection))
        await future

    async def _write(self, collection: str) -> None:
        queue = self._pending[collection]
        while queue:
            batch = queue[:]
            del queue[:]
            points = [point for items, _ in batch for point in items]
            try:
                await self._upsert_now(collection, points)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def _upsert_now(self, collection: str, points: Sequence[IndexPoint]) -> None:
        shard = self._shard(collection)
        edge_points = [
            qe.Point(
                point.id,
                {
                    DENSE: point.dense.tolist(),
                    SPARSE: qe.SparseVector(point.sparse.indices, point.sparse.values),
                },
                point.payload(),
            )
            for point in points
        ]
        await self._call(lambda: shard.update(qe.UpdateOperation.upsert_points(edge_points)))
        self._dirty.add(collection)

    async def delete(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        """Delete points by id."""
        if not ids:
            return
        shard = self._shard(collection)
        await self._call(lambda: shard.update(qe.UpdateOperation.delete_points(list(ids))))
        self._dirty.add(collection)

    async def delete_bank(self, collection: str, *, tenant_id: str, bank_id: str) -> None:
        """Delete every point of a tenant's bank."""
        shard = self._shard(collection)
        condition = _bank_filter(tenant_id, bank_id)
        await self._call(
            lambda: shard.update(qe.UpdateOperation.delete_points_by_filter(condition))
        )
        self._dirty.add(collection)

    async def search(
        self,
        collection: str,
        *,
        dense: npt.NDArray[np.float32] | None,
        sparse: SparseVector | None,
        filter: IndexFilter,
        limit: int,
    ) -> SearchHits:
        """Dense and keyword top ``limit``, planned as one batch."""
        shard = self._shard(collection)
        condition = _edge_filter(filter)
        requests: list[qe.QueryRequest] = []
        if dense is not None:
            requests.append(
                qe.QueryRequest(
                    limit=limit,
                    query=qe.Query.Nearest(dense.tolist(), using=DENSE),
                    filter=condition,
                    with_payload=False,
                )
            )
        if sparse is not None and sparse.indices:
            requests.append(
                qe.QueryRequest(
                    limit=limit,
                    query=qe.Query.Nearest(
                        qe.SparseVector(sparse.indices, sparse.values), using=SPARSE
                    ),
                    filter=condition,
                    with_payload=False,
                )
            )
        if not requests:
            return SearchHits(dense=[], keyword=[])
        batch = qe.QueryBatchRequest(requests)
        results = await self._call(lambda: shard.query_batch(batch))
        lists = _hit_lists(results)
        dense_hits = lists.pop(0) if dense is not None else []
        keyword_hits = lists.pop(0) if lists else []
        return SearchHits(dense=dense_hits, keyword=keyword_hits)

    async def search_dense_many(
        self,
        collection: str,
        dense: Sequence[npt.NDArray[np.float32]],
        *,
        filter: IndexFilter,
        limit: int,
    ) -> list[list[Hit]]:
        """Top ``limit`` by cosine for each vector: one batch, one hop to the index's thread."""
        if not len(dense):
            return []
        shard = self._shard(collection)
        condition = _edge_filter(filter)
        batch = qe.QueryBatchRequest(
            [
                qe.QueryRequest(
                    limit=limit,
                    query=qe.Query.Nearest(vector.tolist(), using=DENSE),
                    filter=condition,
                    with_payload=False,
                )
                for vector in dense
            ]
        )
        results = await self._call(lambda: shard.query_batch(batch))
        return _hit_lists(results)

    async def count(self, collection: str, filter: IndexFilter) -> int:
        """Exact number of matching points."""
        shard = self._shard(collection)
        request = qe.CountRequest(filter=_edge_filter(filter), exact=True)
        return await self._call(lambda: shard.count(request))

    async def point_ids(self, collection: str, *, tenant_id: str, bank_id: str) -> set[uuid.UUID]:
        """Every point id of a tenant's bank."""
        shard = self._shard(collection)
        condition = _bank_filter(tenant_id, bank_id)

        def scroll() -> set[uuid.UUID]:
            found: set[uuid.UUID] = set()
            offset: Any = None
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset,
                        limit=10_000,
                        filter=condition,
                        with_payload=False,
                        with_vector=False,
                    )
                )
                found.update(_as_uuid(record.id) for record in records)
                if offset is None:
                    return found

        return await self._call(scroll)

    async def optimize(self) -> None:
        """Build HNSW graphs and merge segments of the collections written since last time."""
        names = list(self._dirty)
        self._dirty.clear()
        for name in names:
            shard = self._shards.get(name)
            if shard is None:
                continue
            await asyncio.get_running_loop().run_in_executor(self._optimizer, shard.optimize)

    async def close(self) -> None:
        """Flush and close every shard."""
        shards, self._shards = dict(self._shards), {}

        def close_all() -> None:
            for shard in shards.values():
                shard.flush()
                shard.close()

        await asyncio.get_running_loop().run_in_executor(self._optimizer, close_all)
        self._pool.shutdown(wait=True)
        self._optimizer.shutdown(wait=True)


def _hit_lists(results: Sequence[Sequence[Any]]) -> list[list[Hit]]:
    """The hits of each query of a batch, in the batch's order."""
    return [[Hit(_as_uuid(p.id), float(p.score)) for p in result] for result in results]


def _as_uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
