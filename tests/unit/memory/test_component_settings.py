"""The memory component takes its index location, embedding model and key from Settings."""

from __future__ import annotations

from pathlib import Path

from ciq_runtime.settings import Settings
from memory_svc.component import build_memory
from memory_svc.embeddings import DEFAULT_MODEL
from memory_svc.index.edge import EdgeIndex


def _settings(**env: str) -> Settings:
    return Settings.from_env(
        {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/ciq", **env}, service_name="memory"
    )


def test_defaults_are_the_bundled_model_and_the_data_dir_index(tmp_path: Path) -> None:
    parts = build_memory(_settings(CONTEXTIQ_DATA_DIR=str(tmp_path)))
    assert parts.backend.banks.default.embedding_model == DEFAULT_MODEL
    assert isinstance(parts.index, EdgeIndex)
    assert parts.index._root == tmp_path / "qdrant"


def test_embedding_model_and_index_path_come_from_the_environment(tmp_path: Path) -> None:
    parts = build_memory(
        _settings(
            CONTEXTIQ_DATA_DIR=str(tmp_path / "data"),
            CONTEXTIQ_QDRANT_PATH=str(tmp_path / "index"),
            CONTEXTIQ_EMBEDDING_MODEL="openai/text-embedding-3-small",
        )
    )
    assert parts.backend.banks.default.embedding_model == "openai/text-embedding-3-small"
    assert isinstance(parts.index, EdgeIndex)
    assert parts.index._root == tmp_path / "index"
