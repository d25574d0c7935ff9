"""Session-wide servers for the test-suite: real PostgreSQL and NATS JetStream on free ports.

Set ``CONTEXTIQ_TEST_DATABASE_URL`` (SQLAlchemy async URL) or ``CONTEXTIQ_TEST_NATS_URL`` to use
external servers instead. The fixtures are synchronous on purpose: they then work the same from
sync and async tests whatever event-loop scope pytest-asyncio is configured with.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciq_runtime.embedded import EmbeddedNats, EmbeddedPostgres


@pytest.fixture(scope="session")
def service_tmp_path() -> Iterator[Path]:
    """A fresh directory directly under the system temp dir, removed at session end.

    pytest's own tmp_path lives below a 0700 directory that the unprivileged ``pgserver`` user
    (PostgreSQL's account when tests run as root) cannot traverse.
    """
    path = Path(tempfile.mkdtemp(prefix="ciq-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(service_tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy async URL (``postgresql+asyncpg://…``) of the session's database."""
    external = os.environ.get("CONTEXTIQ_TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Not durable: fsync off is safe for a throwaway cluster and makes commits much cheaper.
    server = EmbeddedPostgres(data_dir=service_tmp_path / "pg", durable=False)
    try:
        yield server.start_sync(timeout=60.0).url
    finally:
        server.stop_sync()


@pytest.fixture(scope="session")
def pg_dsn(pg_url: str) -> str:
    """Plain ``postgresql://`` DSN of the same database, for asyncpg."""
    scheme, rest = pg_url.split("://", 1)
    return f"{scheme.split('+', 1)[0]}://{rest}"


@pytest.fixture(scope="session")
def _embedded_nats(service_tmp_path: Path) -> Iterator[EmbeddedNats | None]:
    if os.environ.get("CONTEXTIQ_TEST_NATS_URL"):
        yield None
        return
    server = EmbeddedNats(store_dir=service_tmp_path / "nats")
    try:
        server.start_sync(timeout=30.0)
        yield server
    finally:
        server.stop_sync()


@pytest.fixture(scope="session")
def nats_url(_embedded_nats: EmbeddedNats | None) -> str:
    """NATS URL of the session's JetStream-enabled server."""
    if _embedded_nats is None:
        return os.environ["CONTEXTIQ_TEST_NATS_URL"]
    return _embedded_nats.url


@pytest.fixture(scope="session")
def nats_server(_embedded_nats: EmbeddedNats | None) -> EmbeddedNats:
    """The session's EmbeddedNats, for tests that restart it (its JetStream data survives)."""
    if _embedded_nats is None:
        pytest.skip("CONTEXTIQ_TEST_NATS_URL points at an external server we cannot restart")
    return _embedded_nats
