"""The local ONNX embedder and the batching shared by every embedder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ciq_runtime.errors import InvalidArgument
from memory_svc.embeddings import (
    DEFAULT_MODEL,
    EmbedderRegistry,
    LocalOnnxEmbedder,
    _Batcher,
    embedding_ahead,
)


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


async def test_a_texts_vector_does_not_depend_on_the_texts_embedded_with_it(
    local: LocalOnnxEmbedder,
) -> None:
    # The model quantises activations per run: batched with others, a text's vector would
    # follow its neighbours. One text per run keeps it a function of the text alone.
    texts = [f"fact number {i} about the user's garden" for i in range(40)]
    texts[3] = (
        "The user explained at length that their grandmother taught them to cook bacalhau "
        "every Christmas in a village near the coast, and they still do it in Toronto."
    )
    alone = local.encode_sync([texts[7]])
    concurrent = await asyncio.gather(*(local.embed([text]) for text in texts))
    together = await local.embed(texts)
    assert together.shape == (40, 384)
    assert np.array_equal(concurrent[7], alone)
    assert np.array_equal(together[7], alone[0])
    assert np.array_equal(np.vstack(concurrent), together)


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


async def test_embedding_ahead_is_cancelled_or_seen_when_the_block_leaves_early() -> None:
    gate = asyncio.Event()

    async def slow() -> np.ndarray:
        await gate.wait()
        return np.zeros((1, 3), dtype=np.float32)

    with pytest.raises(RuntimeError), embedding_ahead(slow()) as pending:
        raise RuntimeError("checkout failed")
    await asyncio.sleep(0)
    assert pending.cancelled()

    async def broken() -> np.ndarray:
        raise InvalidArgument("bad text", field="q")

    async def leave_after_it_failed() -> asyncio.Future[np.ndarray]:
        with embedding_ahead(broken()) as failed:
            await asyncio.sleep(0)  # the embedding fails while the block works
            holder.append(failed)
            raise RuntimeError("checkout failed")

    holder: list[asyncio.Future[np.ndarray]] = []
    with pytest.raises(RuntimeError):
        await leave_after_it_failed()
    (failed,) = holder
    assert failed.done()
    assert not failed.cancelled()
    # Its failure was marked seen: no "exception was never retrieved" when it is collected.
    assert failed._log_traceback is False

    with embedding_ahead(slow()) as done:
        gate.set()
        assert (await done).shape == (1, 3)
