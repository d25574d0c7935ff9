"""RecentVectors: a job's facts are embedded once for FindSimilarMemories and ApplyGeneration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import pytest

from memory_svc.backend import Backend
from memory_svc.embeddings import DEFAULT_MODEL, LocalOnnxEmbedder, Vectors
from memory_svc.generation.vectors import RecentVectors


class CountingBackend:
    """The real local model, counting the texts it was asked to embed."""

    def __init__(self, embedder: LocalOnnxEmbedder) -> None:
        self.embedder = embedder
        self.embedded: list[str] = []

    async def embed(self, model: str, texts: Sequence[str]) -> Vectors:
        assert model == DEFAULT_MODEL
        self.embedded.extend(texts)
        return await self.embedder.embed(list(texts))


@pytest.fixture(scope="module")
def local() -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder()


async def test_seen_texts_are_not_embedded_again_and_vectors_match(
    local: LocalOnnxEmbedder,
) -> None:
    backend = CountingBackend(local)
    vectors = RecentVectors(cast(Backend, backend))

    first = await vectors.embed(DEFAULT_MODEL, ["The user likes tea.", "The user owns a bike."])
    second = await vectors.embed(
        DEFAULT_MODEL, ["The user owns a bike.", "The user likes tea.", "The user sails."]
    )

    assert backend.embedded == ["The user likes tea.", "The user owns a bike.", "The user sails."]
    assert second.shape == (3, 384)
    assert np.allclose(second[0], first[1])
    assert np.allclose(second[1], first[0])
    assert np.allclose(second[2], local.encode_sync(["The user sails."])[0], atol=1e-4)


async def test_the_oldest_entries_are_evicted(local: LocalOnnxEmbedder) -> None:
    backend = CountingBackend(local)
    vectors = RecentVectors(cast(Backend, backend), size=2)

    await vectors.embed(DEFAULT_MODEL, ["a", "b"])
    await vectors.embed(DEFAULT_MODEL, ["c"])
    await vectors.embed(DEFAULT_MODEL, ["a", "c"])

    assert backend.embedded == ["a", "b", "c", "a"]
    assert (await vectors.embed(DEFAULT_MODEL, [])).size == 0
