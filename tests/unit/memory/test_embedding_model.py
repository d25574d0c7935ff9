"""The local model prepared for int8 arithmetic: its graph, its cache, its fidelity."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from memory_svc import embedding_model
from memory_svc.embedding_data import MINILM_TOKENIZER
from memory_svc.embedding_model import prepared_model, source_model

SENTENCES = [
    "The user likes hiking in the mountains.",
    "Melanie painted a sunrise over the lake last week.",
    "Remind me to renew my passport before the trip to Lisbon in March.",
    "The user is allergic to peanuts and avoids Thai restaurants.",
    "Caroline went to an LGBTQ support group on Tuesday and found it moving.",
]


def _vectors(path: Path) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(MINILM_TOKENIZER))
    tokenizer.no_padding()
    rows = []
    for text in SENTENCES:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        row = session.run(None, feeds)[0][0].mean(axis=0)
        rows.append(row / np.linalg.norm(row))
    return np.vstack(rows)


def test_prepared_model_runs_every_weight_product_on_int8() -> None:
    graph = onnx.load(str(prepared_model()), load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    weights = {init.name: tuple(init.dims) for init in graph.initializer}
    float_weight_products = [
        weights[node.input[1]]
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in weights
    ]
    # 6 layers x (Q, K, V, attention output, feed-forward up and down).
    assert ops.count("MatMulInteger") == 36
    assert float_weight_products == []


def test_prepared_model_stays_close_to_the_shipped_model() -> None:
    shipped = _vectors(source_model())
    prepared = _vectors(prepared_model())
    cosine = (shipped * prepared).sum(axis=1)
    assert cosine.min() > 0.98
    # The neighbourhoods agree: each sentence is nearest to itself across the two models.
    assert list((prepared @ shipped.T).argmax(axis=1)) == list(range(len(SENTENCES)))


def test_the_prepared_file_is_cached_under_a_digest_of_its_source_and_recipe(
    tmp_path: Path,
) -> None:
    first = prepared_model(tmp_path)
    stamp = first.stat().st_mtime_ns
    again = prepared_model(tmp_path)
    assert again == first
    assert again.stat().st_mtime_ns == stamp
    assert first.parent == tmp_path
    assert first.name.startswith("all-MiniLM-L6-v2.")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no work files left behind


def test_an_unwritable_cache_falls_back_to_the_temp_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(fallback))
    path = prepared_model(blocked / "models")
    assert path.parent == fallback / "contextiq-models"
    assert path.exists()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTEXTIQ_MODEL_CACHE", "/srv/models")
    assert embedding_model.cache_dir() == Path("/srv/models")
    monkeypatch.delenv("CONTEXTIQ_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache")
    assert embedding_model.cache_dir() == Path("/var/cache/contextiq/models")
