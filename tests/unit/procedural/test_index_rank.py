"""The index's ``rank`` range filter (a skill's success rate), on both implementations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from memory_svc.index.edge import EdgeIndex
from memory_svc.index.protocol import NEVER, IndexFilter, IndexPoint, VectorIndex
from memory_svc.index.remote import RemoteIndex
from memory_svc.keyword import KeywordEncoder

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")


@pytest.fixture(params=["edge", "qdrant-client"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorIndex]:
    implementation: VectorIndex = (
        EdgeIndex(tmp_path / "edge")
        if request.param == "edge"
        else RemoteIndex(AsyncQdrantClient(location=":memory:"))
    )
    await implementation.ensure_collection("rank_8", 8)
    try:
        yield implementation
    finally:
        await implementation.close()


def _point(seed: int, rank: float) -> IndexPoint:
    vector = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return IndexPoint(
        id=uuid.UUID(int=seed),
        dense=vector / np.linalg.norm(vector),
        sparse=KeywordEncoder().document("book a flight"),
        tenant_id="t",
        bank_id="procedural",
        scope_key="[]",
        scope_pairs=[],
        topic="skill:tool_usage",
        created_at=0.0,
        updated_at=0.0,
        expires_at=NEVER,
        rank=rank,
    )


async def test_min_rank_keeps_points_at_or_above(index: VectorIndex) -> None:
    points = [_point(1, 0.2), _point(2, 0.75), _point(3, 1.0)]
    await index.upsert("rank_8", points)
    base = IndexFilter(tenant_id="t", bank_id="procedural")
    query = points[0].dense
    hits = await index.search(
        "rank_8",
        dense=query,
        sparse=KeywordEncoder().query("flight"),
        filter=replace(base, min_rank=0.75),
        limit=10,
    )
    assert {h.id for h in hits.dense} == {uuid.UUID(int=2), uuid.UUID(int=3)}
    assert {h.id for h in hits.keyword} == {uuid.UUID(int=2), uuid.UUID(int=3)}
    assert await index.count("rank_8", base) == 3
    # A new rank replaces the old one (RecordSkillOutcome re-upserts the point).
    await index.upsert("rank_8", [_point(1, 0.9)])
    assert await index.count("rank_8", replace(base, min_rank=0.75)) == 3
