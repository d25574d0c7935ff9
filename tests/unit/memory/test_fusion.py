"""Weighted reciprocal rank fusion."""

from __future__ import annotations

import uuid

import pytest

from memory_svc.fusion import single, weighted_rrf
from memory_svc.index.protocol import Hit

A, B, C, D = (uuid.UUID(int=i) for i in range(1, 5))


def test_a_memory_found_by_both_signals_outranks_one_found_by_one() -> None:
    fused = weighted_rrf([Hit(A, 0.9), Hit(B, 0.8)], [Hit(B, 7.0), Hit(C, 3.0)])
    assert [f.id for f in fused] == [B, A, C]
    top = fused[0]
    assert top.signals == ["dense", "keyword"]
    assert (top.dense_score, top.keyword_score) == (0.8, 7.0)
    assert fused[1].signals == ["dense"]
    assert fused[2].signals == ["keyword"]
    assert fused[2].dense_score is None


def test_scores_are_normalised_to_one_for_first_in_both() -> None:
    fused = weighted_rrf([Hit(A, 0.5)], [Hit(A, 1.0)])
    assert fused[0].score == pytest.approx(1.0)
    assert all(0 < f.score <= 1 for f in weighted_rrf([Hit(A, 1), Hit(B, 1)], [Hit(C, 1)]))


def test_weights_tilt_the_ranking() -> None:
    dense = [Hit(A, 0.9), Hit(B, 0.1)]
    keyword = [Hit(B, 5.0), Hit(A, 1.0)]
    assert weighted_rrf(dense, keyword, dense_weight=2.0)[0].id == A
    assert weighted_rrf(dense, keyword, keyword_weight=2.0)[0].id == B


def test_single_signal_keeps_its_own_scores() -> None:
    assert [(f.id, f.score, f.signals) for f in single([Hit(D, 0.7)], dense=True)] == [
        (D, 0.7, ["dense"])
    ]
    assert single([Hit(D, 4.0)], dense=False)[0].keyword_score == 4.0
