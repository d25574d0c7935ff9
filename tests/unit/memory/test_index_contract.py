"""The same contract for both vector index implementations: the embedded engine and a Qdrant
server through qdrant-client (its own local mode stands in for the server)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from memory_svc.index.edge import EdgeIndex
from memory_svc.index.protocol import NEVER, IndexFilter, IndexPoint, VectorIndex
from memory_svc.index.remote import RemoteIndex
from memory_svc.keyword import KeywordEncoder
from memory_svc.scopes import pair_tokens, scope_key

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")

KEYWORD = KeywordEncoder()
COLLECTION = "contract_8"


def _vector(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=8).astype(np.float32)
    return v / np.linalg.norm(v)


def _point(
    seed: int,
    fact: str,
    *,
    tenant: str = "t1",
    bank: str = "default",
    scope: dict[str, str] | None = None,
    topic: str = "",
    expires_at: float = NEVER,
) -> IndexPoint:
    scope = scope or {"user_id": "u1"}
    return IndexPoint(
        id=uuid.UUID(int=seed),
        dense=_vector(seed),
        sparse=KEYWORD.document(fact),
        tenant_id=tenant,
        bank_id=bank,
        scope_key=scope_key(scope),
        scope_pairs=pair_tokens(scope),
        topic=topic,
        created_at=1.0,
        updated_at=1.0,
        expires_at=expires_at,
    )


@pytest.fixture(params=["edge", "qdrant-client"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorIndex]:
    implementation: VectorIndex
    if request.param == "edge":
        implementation = EdgeIndex(tmp_path / "edge")
    else:
        implementation = RemoteIndex(AsyncQdrantClient(location=":memory:"))
    await implementation.ensure_collection(COLLECTION, 8)
    await implementation.ensure_collection(COLLECTION, 8)  # idempotent
    try:
        yield implementation
    finally:
        await implementation.close()


def _base(**changes: object) -> IndexFilter:
    fields: dict[str, object] = {
        "tenant_id": "t1",
        "bank_id": "default",
        "scope_key": scope_key({"user_id": "u1"}),
    }
    fields.update(changes)
    return IndexFilter(**fields)  # type: ignore[arg-type]


async def test_dense_and_keyword_search_with_filters(index: VectorIndex) -> None:
    points = [
        _point(1, "the user likes green tea", topic="USER_PREFERENCES"),
        _point(2, "the user rides a bicycle"),
        _point(3, "the user likes tea", tenant="t2"),
        _point(4, "tea in another bank", bank="other"),
        _point(5, "tea for the agent", scope={"user_id": "u1", "agent_id": "a"}),
        _point(6, "expired tea", expires_at=10.0),
    ]
    await index.upsert(COLLECTION, points)
    hits = await index.search(
        COLLECTION,
        dense=_vector(1),
        sparse=KEYWORD.query("tea"),
        filter=_base(alive_at=time.time()),
        limit=10,
    )
    assert hits.dense[0].id == uuid.UUID(int=1)
    assert hits.dense[0].score == pytest.approx(1.0, abs=1e-4)
    assert {h.id for h in hits.dense} == {uuid.UUID(int=1), uuid.UUID(int=2)}
    assert [h.id for h in hits.keyword] == [uuid.UUID(int=1)]
    inclusive = await index.search(
        COLLECTION,
        dense=None,
        sparse=KEYWORD.query("tea"),
        filter=_base(scope_key=None, scope_pairs=pair_tokens({"user_id": "u1"})),
        limit=10,
    )
    assert {h.id.int for h in inclusive.keyword} == {1, 5, 6}
    only = await index.search(
        COLLECTION,
        dense=_vector(2),
        sparse=None,
        filter=_base(ids=frozenset({uuid.UUID(int=2)})),
        limit=10,
    )
    assert [h.id.int for h in only.dense] == [2]
    topics = await index.search(
        COLLECTION,
        dense=_vector(2),
        sparse=None,
        filter=_base(topics=frozenset({"USER_PREFERENCES"})),
        limit=10,
    )
    assert [h.id.int for h in topics.dense] == [1]


async def test_dense_search_of_several_vectors_in_one_batch(index: VectorIndex) -> None:
    await index.upsert(
        COLLECTION,
        [
            _point(1, "one"),
            _point(2, "two"),
            _point(3, "three"),
            _point(4, "another tenant's", tenant="t2"),
        ],
    )
    alive = _base(alive_at=time.time())

    many = await index.search_dense_many(
        COLLECTION, [_vector(2), _vector(4), _vector(1)], filter=alive, limit=2
    )

    assert len(many) == 3
    for vector, hits in zip([_vector(2), _vector(4), _vector(1)], many, strict=True):
        single = await index.search(COLLECTION, dense=vector, sparse=None, filter=alive, limit=2)
        assert [h.id for h in hits] == [h.id for h in single.dense]
        assert [h.score for h in hits] == pytest.approx([h.score for h in single.dense])
        assert uuid.UUID(int=4) not in {h.id for h in hits}
    assert many[0][0].id == uuid.UUID(int=2)
    assert many[2][0].id == uuid.UUID(int=1)
    assert await index.search_dense_many(COLLECTION, [], filter=alive, limit=2) == []


async def test_upsert_replaces_and_delete_removes(index: VectorIndex) -> None:
    await index.upsert(COLLECTION, [_point(1, "old words")])
    await index.upsert(COLLECTION, [_point(1, "new words")])
    assert await index.count(COLLECTION, _base()) == 1
    hits = await index.search(
        COLLECTION, dense=None, sparse=KEYWORD.query("old"), filter=_base(), limit=5
    )
    assert hits.keyword == []
    await index.upsert(
        COLLECTION, [_point(2, "x"), _point(3, "y", bank="b2"), _point(4, "z", tenant="t2")]
    )
    assert await index.point_ids(COLLECTION, tenant_id="t1", bank_id="default") == {
        uuid.UUID(int=1),
        uuid.UUID(int=2),
    }
    await index.delete(COLLECTION, [uuid.UUID(int=1), uuid.UUID(int=99)])
    assert await index.count(COLLECTION, _base()) == 1
    await index.delete_bank(COLLECTION, tenant_id="t1", bank_id="default")
    assert await index.count(COLLECTION, _base()) == 0
    assert await index.count(COLLECTION, IndexFilter(tenant_id="t1", bank_id="b2")) == 1
    assert await index.count(COLLECTION, IndexFilter(tenant_id="t2", bank_id="default")) == 1
    await index.optimize()
