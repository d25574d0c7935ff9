"""What the memory benchmarks share: a real memory server on a fresh embedded Postgres.

The server is the production component (gRPC, JWT auth, embedded Qdrant engine, ONNX
embeddings) in this process; Postgres runs as its own process, durable (fsync on) as in
production. Rate limits are off: the benchmarks measure the service, not the limiter.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.embedded import EmbeddedPostgres
from ciq_runtime.server import GrpcServer, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from memory_svc.component import MemoryParts, build_memory

__all__ = ["MemoryStack", "memory_stack", "token_metadata"]

_SECRET = "bench-secret-0123456789-0123456789-abcdef"


def token_metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata of an ADMIN JWT for ``tenant``."""
    now = int(time.time())
    token = jwt.encode(
        {
            "sub": "bench",
            "org_id": tenant,
            "permissions": ["ADMIN"],
            "iss": "contextiq",
            "iat": now,
            "exp": now + 86_400,
        },
        _SECRET,
        algorithm="HS256",
    )
    return (("authorization", f"Bearer {token}"),)


@dataclass
class MemoryStack:
    """A running memory server.

    Attributes:
        address: host:port of its gRPC endpoint.
        parts: The component's insides (backend, index).
        pg_url: SQLAlchemy URL of its Postgres.
        workdir: Scratch directory (Postgres data, index).
    """

    address: str
    parts: MemoryParts
    pg_url: str
    workdir: Path


@asynccontextmanager
async def memory_stack(
    *, durable: bool = True, workdir: Path | None = None, **options: Any
) -> AsyncIterator[MemoryStack]:
    """Start Postgres and a memory server in a temporary directory; remove both afterwards.

    With ``workdir`` the stores live there and are kept (a later run reuses them).
    """
    keep = workdir is not None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="ciq-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    postgres = EmbeddedPostgres(data_dir=workdir / "pg", durable=durable)
    try:
        handle = await postgres.start(timeout=120.0)
        settings = Settings.from_env({}, service_name="memory").replace(
            database_url=handle.url,
            jwt_secret=_SECRET,
            rate_limit_per_minute=0,
            tenant_rate_limit_per_minute=0,
        )
        options.setdefault("index_path", workdir / "qdrant")
        parts = build_memory(settings, **options)
        server = GrpcServer(
            host="127.0.0.1",
            port=0,
            components=[parts.component],
            interceptors=default_interceptors(
                build_auth_interceptor(settings, services=service_names([parts.component]))
            ),
            engine=settings.grpc_engine,
        )
        port = await server.start()
        try:
            yield MemoryStack(
                address=f"127.0.0.1:{port}", parts=parts, pg_url=handle.url, workdir=workdir
            )
        finally:
            await server.stop()
    finally:
        await postgres.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
