"""Assembles the memory service: its servicers, its database, index and background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from google.longrunning import operations_pb2_grpc

from ciq_runtime.component_kit import PostgresResource, service_spec
from ciq_runtime.metrics import TenantCountQuery
from ciq_runtime.server import Component
from ciq_runtime.settings import Settings
from contextiq.memory.v1 import memory_job_service_pb2_grpc, memory_service_pb2_grpc
from contextiq.procedural.v1 import procedural_job_service_pb2_grpc, procedural_service_pb2_grpc
from memory_svc import models
from memory_svc.backend import Backend
from memory_svc.banks import BankCache, default_bank
from memory_svc.embeddings import DEFAULT_MODEL, Embedder, EmbedderRegistry, LocalOnnxEmbedder
from memory_svc.generation import jobs_stream
from memory_svc.generation.servicer import Generation
from memory_svc.index.protocol import VectorIndex
from memory_svc.indexing import IndexSync, run_every
from memory_svc.keyword import KeywordEncoder
from memory_svc.procedural.component import ProceduralParts, build_procedural
from memory_svc.reindex import Reindexer
from memory_svc.servicer import (
    MemoryBankServicer,
    MemoryJobServicer,
    MemoryServicer,
    OperationsServicer,
)
from memory_svc.sweeper import sweep_expired

__all__ = ["MemoryParts", "build_component", "build_memory"]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class MemoryParts:
    """The memory component and handles tests and benchmarks reach into.

    Attributes:
        component: What the server hosts.
        backend: Shared resources (database, banks, embedders, index writer).
        reindexer: Runs reindex operations.
        index: The vector index.
        tasks: Background loops, running between start and stop.
        generation: Memory generation (acceptor, applier, outbox relay, waiters).
        procedural: Procedural memory (store, search, candidates, index writer).
    """

    component: Component
    backend: Backend
    reindexer: Reindexer
    index: VectorIndex
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    generation: Generation | None = None
    procedural: ProceduralParts | None = None


def _make_index(settings: Settings, index_path: Path | None, qdrant_url: str | None) -> VectorIndex:
    if qdrant_url:
        from memory_svc.index.remote import RemoteIndex

        return RemoteIndex.connect(qdrant_url, api_key=settings.qdrant_api_key)
    from memory_svc.index.edge import EdgeIndex

    return EdgeIndex(index_path or settings.qdrant_path or settings.data_dir / "qdrant")


def build_memory(
    settings: Settings,
    *,
    index: VectorIndex | None = None,
    index_path: Path | None = None,
    qdrant_url: str | None = None,
    embedding_model: str | None = None,
    litellm_options: Mapping[str, Any] | None = None,
    embedder_factories: Mapping[str, Callable[[], Embedder]] | None = None,
    sweep_interval_s: float | None = None,
    repair_interval_s: float = 10.0,
    repair_after_s: float = 10.0,
    optimize_interval_s: float = 5.0,
    bank_cache_s: float = 5.0,
    relay_sweep_s: float = 2.0,
) -> MemoryParts:
    """Build the memory component with every knob exposed.

    Args:
        settings: Process settings; ``database_url`` is required, ``qdrant_url`` selects a
            Qdrant server, ``data_dir`` holds the embedded index.
        index: A ready index (tests); overrides ``index_path`` and ``qdrant_url``.
        index_path: Directory of the embedded index; ``settings.qdrant_path``, else
            ``<data_dir>/qdrant``.
        qdrant_url: Qdrant server URL; ``settings.qdrant_url`` by default.
        embedding_model: Embedding model of banks that do not name one;
            ``settings.embedding_model``, else the bundled local model.
        litellm_options: Keyword arguments for LiteLLM embedding calls (``api_base``...);
            ``settings.embedding_api_base`` / ``embedding_api_key`` by default.
        embedder_factories: Extra embedders by model name (tests, benchmarks).
        sweep_interval_s: Pause between TTL sweeps; ``settings.memory_sweep_interval_s``.
        repair_interval_s: Pause between index repairs of rows whose index write failed.
        repair_after_s: Age from which a row still marked dirty counts as a failed index
            write (younger ones belong to writes in flight).
        optimize_interval_s: Pause between index optimisations (HNSW builds) after writes.
        bank_cache_s: How long a bank configuration read is reused.
        relay_sweep_s: Pause between sweeps of the generation outbox (jobs are normally
            published right after their commit; the sweep catches leftovers).

    Returns:
        The parts; ``parts.component`` goes to the server.
    """
    db = PostgresResource(
        settings,
        script_location=MIGRATIONS,
        schema=models.SCHEMA,
        version_table=models.VERSION_TABLE,
    )
    embedding_model = embedding_model or settings.embedding_model or DEFAULT_MODEL
    if sweep_interval_s is None:
        sweep_interval_s = settings.memory_sweep_interval_s
    if litellm_options is None:
        litellm_options = {
            key: value
            for key, value in (
                ("api_base", settings.embedding_api_base),
                ("api_key", settings.embedding_api_key),
            )
            if value
        }
    vector_index = index or _make_index(settings, index_path, qdrant_url or settings.qdrant_url)
    embedders = EmbedderRegistry(litellm_options=litellm_options, factories=embedder_factories)
    default_dimension = 384 if embedding_model == DEFAULT_MODEL else 0
    backend = Backend(
        sessions=lambda: db.sessions,
        engine=lambda: db.engine,
        banks=BankCache(
            default=default_bank(embedding_model=embedding_model, dimension=default_dimension),
            ttl_s=bank_cache_s,
        ),
        embedders=embedders,
        keyword=KeywordEncoder(),
        sync=IndexSync(
            index=vector_index,
            sessions=lambda: db.sessions,
            keyword=KeywordEncoder(),
            repair_after=timedelta(seconds=repair_after_s),
        ),
    )
    reindexer = Reindexer(backend)
    procedural = build_procedural(
        settings, backend, repair_interval_s=repair_interval_s, repair_after_s=repair_after_s
    )
    reindexer.also_rebuild = procedural.index.rebuild
    generation, generation_tasks, generation_health, generation_stop = jobs_stream.build(
        settings, backend, engine=lambda: db.engine, relay_sweep_s=relay_sweep_s
    )
    if generation.relay is not None:
        # Learning jobs travel through the generation outbox and its relay.
        procedural.learning.dispatch = generation.relay.dispatch
    parts = MemoryParts(
        component=Component(name="memory", services=[]),
        backend=backend,
        reindexer=reindexer,
        index=vector_index,
        generation=generation,
        procedural=procedural,
    )

    async def flush_and_repair() -> None:
        await backend.sync.flush_clean()

    async def repair() -> None:
        await backend.sync.flush_clean()
        await backend.sync.repair()

    async def sweep() -> None:
        await sweep_expired(backend)

    async def on_start() -> None:
        await db.start()
        embedder = embedders.get(embedding_model)
        if isinstance(embedder, LocalOnnxEmbedder):
            await embedder.warm_up()
        await backend.sync.repair()
        await reindexer.resume()
        await procedural.start()
        parts.tasks = [
            *generation_tasks(),
            asyncio.create_task(run_every(1.0, flush_and_repair, name="index flag flush")),
            asyncio.create_task(run_every(repair_interval_s, repair, name="index repair")),
            asyncio.create_task(run_every(sweep_interval_s, sweep, name="TTL sweep")),
            asyncio.create_task(
                run_every(optimize_interval_s, vector_index.optimize, name="index optimize")
            ),
        ]

    async def on_stop() -> None:
        for task in parts.tasks:
            task.cancel()
        for task in parts.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        parts.tasks = []
        await generation_stop()
        await reindexer.stop()
        await procedural.stop()
        with contextlib.suppress(Exception):
            await backend.sync.flush_clean()
        await vector_index.close()
        await db.stop()

    parts.component = Component(
        name="memory",
        services=[
            service_spec(
                "contextiq.memory.v1.MemoryService",
                MemoryServicer(backend, reindexer, generation),
                memory_service_pb2_grpc.add_MemoryServiceServicer_to_server,
            ),
            service_spec(
                "contextiq.memory.v1.MemoryBankService",
                MemoryBankServicer(backend),
                memory_service_pb2_grpc.add_MemoryBankServiceServicer_to_server,
            ),
            service_spec(
                "contextiq.memory.v1.MemoryJobService",
                MemoryJobServicer(backend, generation),
                memory_job_service_pb2_grpc.add_MemoryJobServiceServicer_to_server,
            ),
            service_spec(
                "contextiq.procedural.v1.ProceduralService",
                procedural.servicer,
                procedural_service_pb2_grpc.add_ProceduralServiceServicer_to_server,
            ),
            service_spec(
                "contextiq.procedural.v1.ProceduralJobService",
                procedural.job_servicer,
                procedural_job_service_pb2_grpc.add_ProceduralJobServiceServicer_to_server,
            ),
            service_spec(
                "google.longrunning.Operations",
                OperationsServicer(backend, generation),
                operations_pb2_grpc.add_OperationsServicer_to_server,
            ),
        ],
        on_start=on_start,
        on_stop=on_stop,
        health_checks={"postgres": db.ping, **generation_health},
        tenant_counts=(
            TenantCountQuery.of_table(
                "memories",
                "memory.memories",
                "deleted_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
            ),
        ),
    )
    return parts


def build_component(settings: Settings, **options: Any) -> Component:
    """Build the memory component for a server process.

    Args:
        settings: Process settings; ``database_url`` is required.
        **options: Keyword options of :func:`build_memory` (``index_path``, ``qdrant_url``,
            ``embedding_model``, ``litellm_options``, ``sweep_interval_s``...).

    Returns:
        The component: Memory, MemoryBank, MemoryJob, Procedural and Operations services plus
        the Postgres engine, vector index and background loops they share.
    """
    return build_memory(settings, **options).component
