"""Vector index on a Qdrant server, through ``qdrant-client`` (used when ``QDRANT_URL`` is set).

Same collections, payload and filters as :mod:`memory_svc.index.edge`, so both pass the same
contract tests; the tests run it on qdrant-client's own local mode (``location=":memory:"``).
Writes use ``wait=True``: a write is searchable when the RPC that made it returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import AsyncQdrantClient, models

from memory_svc.index.protocol import (
    DENSE,
    SPARSE,
    Hit,
    IndexFilter,
    IndexPoint,
    SearchHits,
    SparseVector,
)

__all__ = ["RemoteIndex"]

_KEYWORD_FIELDS = ("bank_id", "scope_key", "scope_pairs", "topic")
_FLOAT_FIELDS = ("expires_at", "created_at", "updated_at", "rank")


def _hit_lists(responses: Sequence[models.QueryResponse]) -> list[list[Hit]]:
    """The hits of each query of a batch, in the batch's order."""
    return [
        [Hit(uuid.UUID(str(p.id)), float(p.score)) for p in response.points]
        for response in responses
    ]


def _filter(spec: IndexFilter) -> models.Filter:
    must: list[Any] = [
        models.FieldCondition(key="tenant_id", match=models.MatchValue(value=spec.tenant_id)),
        models.FieldCondition(key="bank_id", match=models.MatchValue(value=spec.bank_id)),
    ]
    if spec.scope_key is not None:
        must.append(
            models.FieldCondition(key="scope_key", match=models.MatchValue(value=spec.scope_key))
        )
    must.extend(
        models.FieldCondition(key="scope_pairs", match=models.MatchValue(value=token))
        for token in spec.scope_pairs
    )
    if spec.alive_at is not None:
        must.append(models.FieldCondition(key="expires_at", range=models.Range(gt=spec.alive_at)))
    if spec.topics is not None:
        must.append(
            models.FieldCondition(key="topic", match=models.MatchAny(any=sorted(spec.topics)))
        )
    if spec.min_rank is not None:
        must.append(models.FieldCondition(key="rank", range=models.Range(gte=spec.min_rank)))
    if spec.ids is not None:
        must.append(models.HasIdCondition(has_id=[str(i) for i in spec.ids]))
    return models.Filter(must=must)


class RemoteIndex:
    """:class:`~memory_svc.index.protocol.VectorIndex` over a Qdrant server."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        """Wrap a client (``AsyncQdrantClient(url=...)`` or a local-mode one in tests)."""
        self._client = client
        self._known: set[str] = set()

    @classmethod
    def connect(cls, url: str, *, api_key: str | None = None) -> RemoteIndex:
        """Index on the Qdrant server at ``url``."""
        return cls(AsyncQdrantClient(url=url, api_key=api_key))

    async def ensure_collection(self, name: str, dimension: int) -> None:
        """Create the collection and its payload indexes if missing."""
        if name in self._known:
            return
        if not await self._client.collection_exists(name):
            await self._client.create_collection(
                name,
                vectors_config={
                    DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)
                },
                sparse_vectors_config={
                    SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
            )
            await self._client.create_payload_index(
                name,
                "tenant_id",
                field_schema=models.KeywordIndexParams(
                    type=models.KeywordIndexType.KEYWORD, is_tenant=True
                ),
            )
            for keyword in _KEYWORD_FIELDS:
                await self._client.create_payload_index(
                    name, keyword, field_schema=models.PayloadSchemaType.KEYWORD
                )
            for number in _FLOAT_FIELDS:
                await self._client.create_payload_index(
                    name, number, field_schema=models.PayloadSchemaType.FLOAT
                )
        self._known.add(name)

    async def upsert(self, collection: str, points: Sequence[IndexPoint]) -> None:
        """Insert or replace points, waiting until they are searchable."""
        if not points:
            return
        await self._client.upsert(
            collection,
            points=[
                models.PointStruct(
                    id=str(point.id),
                    vector={
                        DENSE: point.dense.tolist(),
                        SPARSE: models.SparseVector(
                            indices=point.sparse.indices, values=point.sparse.values
                        ),
                    },
                    payload=point.payload(),
                )
                for point in points
            ],
            wait=True,
        )

    async def delete(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        """Delete points by id."""
        if ids:
            await self._client.delete(
                collection,
                points_selector=models.PointIdsList(points=[str(i) for i in ids]),
                wait=True,
            )

    async def delete_bank(self, collection: str, *, tenant_id: str, bank_id: str) -> None:
        """Delete every point of a tenant's bank."""
        await self._client.delete(
            collection,
            points_selector=models.FilterSelector(
                filter=_filter(IndexFilter(tenant_id=tenant_id, bank_id=bank_id))
            ),
            wait=True,
        )

    async def search(
        self,
        collection: str,
        *,
        dense: npt.NDArray[np.float32] | None,
        sparse: SparseVector | None,
        filter: IndexFilter,
        limit: int,
    ) -> SearchHits:
        """Dense and keyword top ``limit`` in one batch request."""
        condition = _filter(filter)
        requests: list[models.QueryRequest] = []
        if dense is not None:
            requests.append(
                models.QueryRequest(
                    query=dense.tolist(), using=DENSE, filter=condition, limit=limit
                )
            )
        if sparse is not None and sparse.indices:
            requests.append(
                models.QueryRequest(
                    query=models.SparseVector(indices=sparse.indices, values=sparse.values),
                    using=SPARSE,
                    filter=condition,
                    limit=limit,
                )
            )
        if not requests:
            return SearchHits(dense=[], keyword=[])
        responses = await self._client.query_batch_points(collection, requests=requests)
        lists = _hit_lists(responses)
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
        """Top ``limit`` by cosine for each vector, in one batch request."""
        if not len(dense):
            return []
        condition = _filter(filter)
        responses = await self._client.query_batch_points(
            collection,
            requests=[
                models.QueryRequest(
                    query=vector.tolist(), using=DENSE, filter=condition, limit=limit
                )
                for vector in dense
            ],
        )
        return _hit_lists(responses)

    async def count(self, collection: str, filter: IndexFilter) -> int:
        """Exact number of matching points."""
        result = await self._client.count(collection, count_filter=_filter(filter), exact=True)
        return int(result.count)

    async def point_ids(self, collection: str, *, tenant_id: str, bank_id: str) -> set[uuid.UUID]:
        """Every point id of a tenant's bank."""
        condition = _filter(IndexFilter(tenant_id=tenant_id, bank_id=bank_id))
        found: set[uuid.UUID] = set()
        offset: Any = None
        while True:
            records, offset = await self._client.scroll(
                collection,
                scroll_filter=condition,
                limit=10_000,
                offset=offset,
                with_payload=False,
                with_vectors=False,
            )
            found.update(uuid.UUID(str(record.id)) for record in records)
            if offset is None:
                return found

    async def optimize(self) -> None:
        """Nothing to do: the server optimises on its own."""

    async def close(self) -> None:
        """Close the client."""
        await self._client.close()
