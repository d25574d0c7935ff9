"""Fixtures for the embedded-server tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciq_runtime.embedded import EmbeddedPostgres


@pytest.fixture
def work_dir(service_tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A per-test directory the unprivileged PostgreSQL user can reach."""
    path = service_tmp_path / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_dir(service_tmp_path: Path) -> Path:
    """A data directory initialised once per module and left stopped (saves an initdb per test)."""
    data_dir = service_tmp_path / "shared-cluster" / "pg"
    server = EmbeddedPostgres(data_dir=data_dir, durable=False)
    try:
        server.start_sync()
    finally:
        server.stop_sync()
    return data_dir
