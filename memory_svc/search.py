"""SearchMemories: hybrid (dense + BM25) retrieval within a scope, now or as of a past time.

Current state: the index returns the top candidates of each signal under the tenant, bank,
scope, expiry (and, for a filter, the matching ids resolved in Postgres); the rankings are
fused (:mod:`memory_svc.fusion`) and the winners are re-read from Postgres, which drops
anything deleted, expired or changed since the index saw it.

As of a past time: the index only knows the present, so the search runs over the as-of
snapshots of the scope rebuilt from revisions in Postgres (at most
:data:`AS_OF_LIMIT` memories). Dense scores reuse the stored embedding when the fact is
unchanged since and embed the other facts on the fly; BM25 is computed in numpy over the
snapshot set. Cost: one Postgres scan of the scope's revisions plus, in the worst case, one
embedding per changed fact (about 1-3 ms each) -- fine for a user's scope, not meant for
scopes of millions.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
from sqlalchemy import ColumnElement, and_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from ciq_runtime.errors import FailedPrecondition, InvalidArgument
from contextiq.common.v1 import common_pb2
from contextiq.memory.v1 import memory_service_pb2
from memory_svc import models, repository, validation
from memory_svc.backend import Backend
from memory_svc.banks import BankConfig
from memory_svc.convert import memory_from_row
from memory_svc.embeddings import embedding_ahead
from memory_svc.filters import search_filter
from memory_svc.fusion import Fused, single, weighted_rrf
from memory_svc.index.protocol import Hit, IndexFilter, SparseVector
from memory_svc.indexing import vector_of
from memory_svc.scopes import pair_tokens, scope_key, validate_scope

__all__ = ["AS_OF_LIMIT", "Searcher"]

m = models.memories

AS_OF_LIMIT: Final = 20_000
#: A filter matching at most this many memories is pushed into the index as an id set;
#: beyond it the index over-fetches and Postgres drops the non-matching candidates.
_ID_PUSHDOWN: Final = 10_000
_MODES: Final = {
    memory_service_pb2.SEARCH_MODE_UNSPECIFIED: "hybrid",
    memory_service_pb2.SEARCH_MODE_HYBRID: "hybrid",
    memory_service_pb2.SEARCH_MODE_DENSE: "dense",
    memory_service_pb2.SEARCH_MODE_KEYWORD: "keyword",
}


def _candidates(top_k: int) -> int:
    return min(max(3 * top_k, 30), 300)


class Searcher:
    """Runs searches for the servicer."""

    def __init__(self, backend: Backend) -> None:
        """Bind to the service's resources."""
        self._b = backend

    async def search(
        self, tenant_id: str, request: memory_service_pb2.SearchMemoriesRequest
    ) -> memory_service_pb2.SearchMemoriesResponse:
        """Validate and run a search."""
        b = self._b
        bank = await b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
        scope = validate_scope(request.scope)
        query = validation.validate_query(request.search_query)
        top_k = validation.validate_top_k(request.top_k)
        if request.mode not in _MODES:
            raise InvalidArgument("mode is not a SearchMode", field="mode")
        mode = _MODES[request.mode]
        if request.scope_match not in (
            common_pb2.SCOPE_MATCH_UNSPECIFIED,
            common_pb2.SCOPE_MATCH_EXACT,
            common_pb2.SCOPE_MATCH_INCLUSIVE,
        ):
            raise InvalidArgument("scope_match is not a ScopeMatch", field="scope_match")
        inclusive = request.scope_match == common_pb2.SCOPE_MATCH_INCLUSIVE
        if not math.isfinite(request.min_score):
            raise InvalidArgument("min_score must be a finite number", field="min_score")
        bank.require_indexed()
        if request.HasField("as_of"):
            as_of = request.as_of.ToDatetime(tzinfo=b.clock().tzinfo)
            fused, rows = await self._search_as_of(
                tenant_id, bank, scope, inclusive, query, mode, request.filter, as_of, top_k
            )
        else:
            fused, rows = await self._search_now(
                tenant_id, bank, scope, inclusive, query, mode, request.filter, top_k
            )
        response = memory_service_pb2.SearchMemoriesResponse()
        for item in fused:
            row = rows.get(item.id)
            if row is None or item.score < request.min_score:
                continue
            response.results.append(
                memory_service_pb2.SearchResult(
                    memory=memory_from_row(row),
                    score=item.score,
                    matched_signals=item.signals,
                    dense_score=item.dense_score or 0.0,
                    keyword_score=item.keyword_score or 0.0,
                )
            )
            if len(response.results) == top_k:
                break
        return response

    def _fuse(self, mode: str, dense: Sequence[Hit], keyword: Sequence[Hit]) -> list[Fused]:
        if mode == "dense":
            return single(dense, dense=True)
        if mode == "keyword":
            return single(keyword, dense=False)
        return weighted_rrf(dense, keyword)

    async def _search_now(
        self,
        tenant_id: str,
        bank: BankConfig,
        scope: dict[str, str],
        inclusive: bool,
        query: str,
        mode: str,
        filter_text: str,
        top_k: int,
    ) -> tuple[list[Fused], dict[uuid.UUID, Any]]:
        b = self._b
        where = search_filter(filter_text, m)
        scope_sql = repository.scope_condition(scope, inclusive=inclusive)
        now = b.clock()
        limit = _candidates(top_k)
        ids: frozenset[uuid.UUID] | None = None
        if filter_text.strip():
            async with b.sessions() as session:
                matching = await repository.matching_ids(
                    session,
                    tenant_id=tenant_id,
                    bank_id=bank.id,
                    now=now,
                    scope=scope_sql,
                    where=where,
                    limit=_ID_PUSHDOWN + 1,
                )
            if not matching:
                return [], {}
            if len(matching) <= _ID_PUSHDOWN:
                ids = frozenset(matching)
            else:
                limit = min(limit * 4, 1000)
        # The query is embedded while a connection is checked out: the hydration then starts
        # at once. Without a filter it runs on the driver (no ORM session needed).
        ahead = (
            embedding_ahead(b.embed(bank.indexed_model, [query]))
            if mode != "keyword"
            else contextlib.nullcontext()
        )
        with ahead as embedding:
            async with b.sessions() if filter_text.strip() else b.autocommit() as db:
                if isinstance(db, AsyncSession):
                    await db.connection()
                dense_query = (await embedding)[0] if embedding is not None else None
                return await self._rank_and_hydrate(
                    db,
                    tenant_id,
                    bank,
                    scope,
                    inclusive,
                    query,
                    mode,
                    filter_text,
                    top_k,
                    dense_query=dense_query,
                    ids=ids,
                    limit=limit,
                    now=now,
                    where=where,
                    scope_sql=scope_sql,
                )

    async def _rank_and_hydrate(
        self,
        db: Any,
        tenant_id: str,
        bank: BankConfig,
        scope: dict[str, str],
        inclusive: bool,
        query: str,
        mode: str,
        filter_text: str,
        top_k: int,
        *,
        dense_query: np.ndarray | None,
        ids: frozenset[uuid.UUID] | None,
        limit: int,
        now: datetime,
        where: ColumnElement[bool],
        scope_sql: ColumnElement[bool],
    ) -> tuple[list[Fused], dict[uuid.UUID, Any]]:
        """Rank in the index, then read the winners through ``db``: an ORM session with a
        filter, a plain connection without one."""
        b = self._b
        sparse_query = b.keyword.query(query) if mode != "dense" else None
        index_filter = IndexFilter(
            tenant_id=tenant_id,
            bank_id=bank.id,
            scope_key=None if inclusive else scope_key(scope),
            scope_pairs=pair_tokens(scope) if inclusive else [],
            alive_at=now.timestamp(),
            ids=ids,
        )
        collection = await b.collection(bank)
        hits = await b.sync.index.search(
            collection, dense=dense_query, sparse=sparse_query, filter=index_filter, limit=limit
        )
        fused = self._fuse(mode, hits.dense, hits.keyword)
        # Re-read the winners from Postgres, best first, a few more than asked for: the index
        # may hold a few stale points, and each row read costs time on the hot path.
        rows: dict[uuid.UUID, Any] = {}
        start = 0
        while start < len(fused) and len(rows) < top_k:
            chunk = fused[start : start + top_k - len(rows) + 5]
            start += len(chunk)
            chunk_ids = [item.id for item in chunk]
            if filter_text.strip():
                found = await repository.hydrate(
                    db,
                    tenant_id=tenant_id,
                    bank_id=bank.id,
                    ids=chunk_ids,
                    now=now,
                    scope=scope_sql,
                    where=where,
                )
            else:
                found = await repository.hydrate_fast(
                    db,
                    tenant_id=tenant_id,
                    bank_id=bank.id,
                    ids=chunk_ids,
                    now=now,
                    scope=scope,
                    inclusive=inclusive,
                )
            rows.update(found)
        return fused[:start], rows

    async def _search_as_of(
        self,
        tenant_id: str,
        bank: BankConfig,
        scope: dict[str, str],
        inclusive: bool,
        query: str,
        mode: str,
        filter_text: str,
        as_of: datetime,
        top_k: int,
    ) -> tuple[list[Fused], dict[uuid.UUID, Any]]:
        b = self._b
        snapshot = repository.revisions_as_of(tenant_id=tenant_id, bank_id=bank.id, as_of=as_of)
        where = search_filter(filter_text, snapshot)
        condition: ColumnElement[bool] = and_(
            repository.snapshot_alive(snapshot, as_of),
            repository.scope_condition(scope, inclusive=inclusive, table=snapshot),
            where if where is not None else true(),
        )
        statement = (
            select(*snapshot.c, m.c.embedding, m.c.fact.label("current_fact"), m.c.embedding_model)
            .select_from(
                snapshot.outerjoin(m, and_(m.c.id == snapshot.c.id, m.c.tenant_id == tenant_id))
            )
            .where(condition)
            .limit(AS_OF_LIMIT + 1)
        )
        async with b.sessions() as session:
            rows = (await session.execute(statement)).all()
        if len(rows) > AS_OF_LIMIT:
            raise FailedPrecondition(
                f"an as_of search covers at most {AS_OF_LIMIT} memories; "
                "narrow the scope or the filter",
                reason="AS_OF_SCOPE_TOO_LARGE",
            )
        if not rows:
            return [], {}
        limit = _candidates(top_k)
        dense_hits: list[Hit] = []
        keyword_hits: list[Hit] = []
        if mode != "keyword":
            vectors = await self._snapshot_vectors(bank, rows)
            query_vector = (await b.embed(bank.indexed_model, [query]))[0]
            scores = vectors @ query_vector
            order = np.argsort(-scores)[:limit]
            dense_hits = [Hit(rows[i].id, float(scores[i])) for i in order]
        if mode != "dense":
            keyword_hits = _bm25(
                [b.keyword.document(row.fact) for row in rows],
                b.keyword.query(query),
                [row.id for row in rows],
                limit,
            )
        return self._fuse(mode, dense_hits, keyword_hits), {row.id: row for row in rows}

    async def _snapshot_vectors(self, bank: BankConfig, rows: Sequence[Any]) -> np.ndarray:
        missing = [
            i
            for i, row in enumerate(rows)
            if row.embedding is None
            or row.current_fact != row.fact
            or row.embedding_model != bank.indexed_model
        ]
        fresh = (
            await self._b.embed(bank.indexed_model, [rows[i].fact for i in missing])
            if missing
            else None
        )
        known = next((vector_of(row.embedding) for row in rows if row.embedding is not None), None)
        dimension = fresh.shape[1] if fresh is not None else len(known) if known is not None else 0
        matrix = np.zeros((len(rows), dimension), dtype=np.float32)
        for i, row in enumerate(rows):
            if row.embedding is not None and i not in set(missing):
                matrix[i] = vector_of(row.embedding)
        if fresh is not None:
            matrix[missing] = fresh
        return matrix


def _bm25(
    documents: Sequence[SparseVector], query: SparseVector, ids: Sequence[uuid.UUID], limit: int
) -> list[Hit]:
    """BM25 over an in-memory set: document TF weights times IDF computed over the set."""
    terms = set(query.indices)
    if not terms:
        return []
    frequency: dict[int, int] = dict.fromkeys(terms, 0)
    for document in documents:
        for index in document.indices:
            if index in frequency:
                frequency[index] += 1
    n = len(documents)
    idf = {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}
    scored = []
    for document, memory_id in zip(documents, ids, strict=True):
        score = sum(
            idf[index] * value
            for index, value in zip(document.indices, document.values, strict=True)
            if index in terms
        )
        if score > 0:
            scored.append(Hit(memory_id, score))
    scored.sort(key=lambda hit: -hit.score)
    return scored[:limit]
