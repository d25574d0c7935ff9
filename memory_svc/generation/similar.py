"""FindSimilarMemories: per new fact, the live memories of exactly the scope most like it.

The facts are embedded in one batch; each is searched (dense, cosine) in the index under the
tenant, bank and exact scope, and the hits are re-read from Postgres, which drops anything
deleted, expired or re-scoped since the index saw it. Similarities are the index's cosine
scores of L2-normalised embeddings.
"""

from __future__ import annotations

from typing import Final

from ciq_runtime.errors import InvalidArgument
from contextiq.memory.v1 import memory_job_service_pb2
from memory_svc import repository, validation
from memory_svc.backend import Backend
from memory_svc.convert import memory_from_row
from memory_svc.embeddings import embedding_ahead
from memory_svc.generation.vectors import RecentVectors
from memory_svc.index.protocol import IndexFilter
from memory_svc.scopes import scope_key, validate_scope

__all__ = ["find_similar"]

_DEFAULT_TOP_K: Final = 5
_MAX_TOP_K: Final = 50
_MAX_FACTS: Final = 1_000
#: Extra index hits per fact, in case a few are stale and dropped by the Postgres re-read.
_SLACK: Final = 5


async def find_similar(
    backend: Backend,
    tenant_id: str,
    request: memory_job_service_pb2.FindSimilarMemoriesRequest,
    *,
    vectors: RecentVectors,
) -> memory_job_service_pb2.FindSimilarMemoriesResponse:
    """Candidates of each fact, most similar first."""
    b = backend
    bank = await b.bank(tenant_id=tenant_id, bank_id=request.bank_id)
    scope = validate_scope(request.scope, allowed_keys=bank.scope_keys)
    if not request.facts:
        raise InvalidArgument("facts must not be empty", field="facts")
    if len(request.facts) > _MAX_FACTS:
        raise InvalidArgument(f"facts is limited to {_MAX_FACTS} entries", field="facts")
    texts = [
        validation.validate_fact(fact.fact, field=f"facts[{i}].fact")
        for i, fact in enumerate(request.facts)
    ]
    if request.top_k < 0 or request.top_k > _MAX_TOP_K:
        raise InvalidArgument(f"top_k must be between 1 and {_MAX_TOP_K}", field="top_k")
    top_k = request.top_k or _DEFAULT_TOP_K
    bank.require_indexed()
    now = b.clock()
    index_filter = IndexFilter(
        tenant_id=tenant_id,
        bank_id=bank.id,
        scope_key=scope_key(scope),
        alive_at=now.timestamp(),
    )
    # The facts are embedded while the connection of the re-read is checked out.
    with embedding_ahead(vectors.embed(bank.indexed_model, texts)) as embedding:
        async with b.autocommit() as connection:
            collection = await b.collection(bank)
            embedded = await embedding
            searches = await b.sync.index.search_dense_many(
                collection, list(embedded), filter=index_filter, limit=top_k + _SLACK
            )
            ids = list(dict.fromkeys(hit.id for hits in searches for hit in hits))
            rows = await repository.hydrate_fast(
                connection,
                tenant_id=tenant_id,
                bank_id=bank.id,
                ids=ids,
                now=now,
                scope=scope,
                inclusive=False,
            )
    response = memory_job_service_pb2.FindSimilarMemoriesResponse()
    for i, hits in enumerate(searches):
        result = response.results.add(fact_index=i)
        for hit in hits:
            row = rows.get(hit.id)
            if row is None:
                continue
            result.memories.append(memory_from_row(row))
            result.similarities.append(float(hit.score))
            if len(result.memories) == top_k:
                break
    return response
