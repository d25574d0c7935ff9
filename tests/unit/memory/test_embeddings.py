"""The local ONNX embedder and the batching shared by every embedder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ciq_runtime.errors import InvalidArgument
from memory_svc.embeddings import DEFAULT_MODEL, EmbedderRegistry, LocalOnnxEmbedder, _Batcher


@pytest.fixture(scope="module")
def local() -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder()


async def test_paraphrases_are_closer_than_unrelated_sentences(local: LocalOnnxEmbedder) -> None:
    vectors = await local.embed(
        [
            "The user likes hiking in the mountains.",
            "The user enjoys mountain hikes.",
            "The capital of France is Paris.",
        ]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.8
    assert similarity[0, 2] < 0.2


async def test_concurrent_calls_are_batched_and_match_single_calls(
    local: LocalOnnxEmbedder,
) -> None:
    texts = [f"fact number {i} about the user's garden" for i in range(40)]
    together = await asyncio.gather(*(local.embed([text]) for text in texts))
    alone = local.encode_sync([texts[7]])
    assert np.allclose(together[7], alone, atol=1e-4)


async def test_batcher_coalesces_waiting_calls() -> None:
    sizes: list[int] = []

    async def run(texts: list[str]) -> np.ndarray:
        sizes.append(len(texts))
        await asyncio.sleep(0.01)
        return np.arange(len(texts), dtype=np.float32)[:, None]

    batcher = _Batcher(run, max_batch=8)
    results = await asyncio.gather(*(batcher.embed([str(i)]) for i in range(20)))
    assert [float(r[0, 0]) for r in results[:1]] == [0.0]
    assert len(sizes) < 20
    assert max(sizes) <= 8
    assert sum(sizes) == 20


def test_registry_names() -> None:
    EmbedderRegistry.check_name(DEFAULT_MODEL, field="f")
    EmbedderRegistry.check_name("openai/text-embedding-3-small", field="f")
    with pytest.raises(InvalidArgument):
        EmbedderRegistry.check_name("local/other", field="f")
    assert isinstance(EmbedderRegistry().get(DEFAULT_MODEL), LocalOnnxEmbedder)
