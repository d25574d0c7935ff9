"""The small interface both vector index implementations offer, and its value types.

One collection per embedding model (its vectors share one dimension); every tenant's and
bank's points live in it, told apart by payload fields with payload indexes. A point is one
memory, keyed by the memory id, with a dense vector (cosine) and a sparse BM25 vector of the
fact (IDF applied by the engine at query time).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "DENSE",
    "NEVER",
    "SPARSE",
    "Hit",
    "IndexFilter",
    "IndexPoint",
    "SearchHits",
    "SparseVector",
    "VectorIndex",
    "collection_name",
]

DENSE = "dense"
SPARSE = "bm25"
#: expires_at of a memory that never expires (epoch seconds, year 9999): one range condition
#: then covers "no expiry" and "expires later".
NEVER = 253_402_300_799.0


@dataclass(frozen=True, slots=True)
class SparseVector:
    """Token ids (hashed terms) and their weights."""

    indices: list[int]
    values: list[float]


@dataclass(frozen=True, slots=True)
class IndexPoint:
    """One memory as the index holds it.

    Attributes:
        id: The memory id.
        dense: L2-normalised embedding of the fact.
        sparse: BM25 document vector of the fact.
        tenant_id: Owner tenant.
        bank_id: Bank of the memory.
        scope_key: Canonical scope (exact match).
        scope_pairs: One token per scope pair (inclusive match).
        topic: Topic id or "".
        created_at: Epoch seconds.
        updated_at: Epoch seconds.
        expires_at: Epoch seconds, :data:`NEVER` when it never expires.
        rank: A number searches may require a minimum of (a skill's success rate in the
            procedural collections; 0 for memories).
    """

    id: uuid.UUID
    dense: npt.NDArray[np.float32]
    sparse: SparseVector
    tenant_id: str
    bank_id: str
    scope_key: str
    scope_pairs: list[str]
    topic: str
    created_at: float
    updated_at: float
    expires_at: float
    rank: float = 0.0

    def payload(self) -> dict[str, object]:
        """The payload stored with the point."""
        return {
            "tenant_id": self.tenant_id,
            "bank_id": self.bank_id,
            "scope_key": self.scope_key,
            "scope_pairs": self.scope_pairs,
            "topic": self.topic,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "rank": self.rank,
        }


@dataclass(frozen=True, slots=True)
class IndexFilter:
    """Which points a search may return. Tenant and bank are always required.

    Attributes:
        tenant_id: The caller's tenant.
        bank_id: The bank searched.
        scope_key: Exact scope match when set.
        scope_pairs: Inclusive match: the point has every one of these pair tokens.
        alive_at: Only points with ``expires_at`` after this (epoch seconds).
        ids: Only these memories (a filter resolved in Postgres), when set.
        topics: Only these topics, when set.
        min_rank: Only points whose ``rank`` is at least this, when set.
    """

    tenant_id: str
    bank_id: str
    scope_key: str | None = None
    scope_pairs: list[str] = field(default_factory=list)
    alive_at: float | None = None
    ids: frozenset[uuid.UUID] | None = None
    topics: frozenset[str] | None = None
    min_rank: float | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """A point found by one signal, with that signal's score."""

    id: uuid.UUID
    score: float


@dataclass(frozen=True, slots=True)
class SearchHits:
    """Both rankings of a hybrid search (either may be empty when not asked for)."""

    dense: list[Hit]
    keyword: list[Hit]


class VectorIndex(Protocol):
    """Operations the service needs from a vector store. All are safe to call concurrently."""

    async def ensure_collection(self, name: str, dimension: int) -> None:
        """Create the collection (vectors, sparse vectors, payload indexes) if missing."""
        ...

    async def upsert(self, collection: str, points: Sequence[IndexPoint]) -> None:
        """Insert or replace points; visible to searches when this returns."""
        ...

    async def delete(self, collection: str, ids: Sequence[uuid.UUID]) -> None:
        """Delete points by id (missing ids are ignored)."""
        ...

    async def delete_bank(self, collection: str, *, tenant_id: str, bank_id: str) -> None:
        """Delete every point of a tenant's bank."""
        ...

    async def search(
        self,
        collection: str,
        *,
        dense: npt.NDArray[np.float32] | None,
        sparse: SparseVector | None,
        filter: IndexFilter,
        limit: int,
    ) -> SearchHits:
        """Top ``limit`` points by cosine (``dense``) and by BM25 (``sparse``), filtered."""
        ...

    async def search_dense_many(
        self,
        collection: str,
        dense: Sequence[npt.NDArray[np.float32]],
        *,
        filter: IndexFilter,
        limit: int,
    ) -> list[list[Hit]]:
        """Top ``limit`` points by cosine for each vector, filtered, in one batch."""
        ...

    async def count(self, collection: str, filter: IndexFilter) -> int:
        """Number of points matching the filter."""
        ...

    async def point_ids(self, collection: str, *, tenant_id: str, bank_id: str) -> set[uuid.UUID]:
        """Every point id of a tenant's bank (reindex uses it to drop stale points)."""
        ...

    async def optimize(self) -> None:
        """Build pending index structures (blocking work, run off the request path)."""
        ...

    async def close(self) -> None:
        """Flush and release everything."""
        ...


_NAME_RE = re.compile(r"[^a-z0-9]+")


def collection_name(model: str, dimension: int) -> str:
    """Collection of a model's vectors, e.g. ``memories_local_all_minilm_l6_v2_384``."""
    slug = _NAME_RE.sub("_", model.lower()).strip("_")[:80]
    return f"memories_{slug}_{dimension}"
