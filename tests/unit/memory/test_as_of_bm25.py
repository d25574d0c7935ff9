"""The in-memory BM25 used by as-of searches."""

from __future__ import annotations

import uuid

from memory_svc.keyword import KeywordEncoder
from memory_svc.search import _bm25


def test_rare_terms_weigh_more_and_non_matches_are_dropped() -> None:
    encoder = KeywordEncoder()
    facts = ["the user likes tea", "the user likes coffee", "tea and biscuits with tea"]
    ids = [uuid.UUID(int=i) for i in range(3)]
    hits = _bm25([encoder.document(f) for f in facts], encoder.query("tea"), ids, 10)
    assert {h.id.int for h in hits} == {0, 2}
    assert hits[0].id.int == 2  # two occurrences
    assert _bm25([encoder.document(f) for f in facts], encoder.query("zebra"), ids, 10) == []
