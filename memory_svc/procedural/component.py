"""Assembles procedural memory inside the memory service: its schema, index writer, store,
search, candidates and servicer, and the loop repairing failed index writes."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ciq_runtime.component_kit import PostgresResource
from ciq_runtime.settings import Settings
from memory_svc.backend import Backend
from memory_svc.indexing import run_every
from memory_svc.procedural import models
from memory_svc.procedural.candidates import CandidateOps
from memory_svc.procedural.indexing import ProceduralIndex
from memory_svc.procedural.learning import Learning
from memory_svc.procedural.search import ProceduralSearcher
from memory_svc.procedural.servicer import ProceduralJobServicer, ProceduralServicer
from memory_svc.procedural.store import ProceduralStore

__all__ = ["ProceduralParts", "build_procedural"]

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class ProceduralParts:
    """Procedural memory's pieces; the memory component starts and stops them.

    Attributes:
        db: The ``procedural`` schema's engine (migrated on start).
        index: Writes procedural rows to the vector index; rebuilds it.
        store: Workflows, skills and trajectories.
        candidates: Skill candidates.
        search: SearchProcedural.
        learning: LearnFromTrajectories and the worker's calls.
        servicer: The gRPC servicer.
        job_servicer: The internal ProceduralJobService servicer (the learning worker's).
        repair_interval_s: Pause between index repairs.
        tasks: Background loops, running between start and stop.
    """

    db: PostgresResource
    index: ProceduralIndex
    store: ProceduralStore
    candidates: CandidateOps
    search: ProceduralSearcher
    learning: Learning
    servicer: ProceduralServicer
    job_servicer: ProceduralJobServicer
    repair_interval_s: float
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Migrate and open the schema, open the collection, repair, start the repair loop."""
        await self.db.start()
        await self.index.collection()
        await self.index.repair()
        self.tasks = [
            asyncio.create_task(
                run_every(self.repair_interval_s, self.index.repair, name="procedural repair")
            )
        ]

    async def stop(self) -> None:
        """Stop the loop and close the engine (the memory component closes the index)."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []
        await self.db.stop()


def build_procedural(
    settings: Settings,
    backend: Backend,
    *,
    repair_interval_s: float = 10.0,
    repair_after_s: float = 10.0,
) -> ProceduralParts:
    """Build procedural memory over the memory service's embedders and index.

    Args:
        settings: Process settings (``database_url``, pool sizes).
        backend: The memory service's resources.
        repair_interval_s: Pause between repairs of rows whose index write failed.
        repair_after_s: Age from which a dirty row counts as a failed index write.

    Returns:
        The parts; the memory component calls ``start`` / ``stop`` and hosts ``servicer``.
    """
    db = PostgresResource(
        settings,
        script_location=MIGRATIONS,
        schema=models.SCHEMA,
        version_table=models.VERSION_TABLE,
    )
    index = ProceduralIndex(
        backend, sessions=lambda: db.sessions, repair_after=timedelta(seconds=repair_after_s)
    )
    store = ProceduralStore(backend, sessions=lambda: db.sessions, index=index)
    candidates = CandidateOps(store)
    search = ProceduralSearcher(backend, store, lambda: db.engine)
    learning = Learning(backend, store, candidates, default_model=settings.llm_model or "")
    return ProceduralParts(
        db=db,
        index=index,
        store=store,
        candidates=candidates,
        search=search,
        learning=learning,
        servicer=ProceduralServicer(store, search, candidates, learning),
        job_servicer=ProceduralJobServicer(learning),
        repair_interval_s=repair_interval_s,
    )
