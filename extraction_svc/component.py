"""Assembles the extraction service: its servicer, the job worker, NATS, its database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from ciq_runtime.component_kit import NatsResource, PostgresResource, service_spec
from ciq_runtime.errors import FailedPrecondition
from ciq_runtime.server import Component
from ciq_runtime.settings import Settings
from contextiq.extraction.v1 import extraction_service_pb2_grpc
from extraction_svc import jobs, models
from extraction_svc.clients import ServiceClients
from extraction_svc.dead_letters import DeadLetterStore
from extraction_svc.generation import GenerateMemoriesHandler, generate_memories_spec
from extraction_svc.learn_job import LearnHandler, learn_procedural_spec
from extraction_svc.llm import LlmClient
from extraction_svc.runner import JobObserver, JobRunner, RunnerConfig
from extraction_svc.servicer import ExtractionServicer

__all__ = ["ExtractionParts", "build_component", "build_extraction", "runner_config"]

MIGRATIONS = Path(__file__).parent / "migrations"


def runner_config(settings: Settings) -> RunnerConfig:
    """The job runner's configuration from the process settings."""
    return RunnerConfig(
        stream=jobs.STREAM,
        concurrency=settings.worker_concurrency,
        ack_wait_s=settings.worker_ack_wait_s,
        max_deliver=settings.worker_max_deliver,
        backoff_s=settings.worker_backoff_s,
        job_timeout_s=settings.worker_job_timeout_s,
        grace_s=settings.shutdown_grace_s,
    )


@dataclass
class ExtractionParts:
    """The component and the pieces tests and other job types reach into."""

    component: Component
    db: PostgresResource
    bus: NatsResource
    llm: LlmClient
    runners: list[JobRunner]  # type: ignore[type-arg]
    clients: ServiceClients | None

    @property
    def dead_letters(self) -> DeadLetterStore:
        """The dead-letter store (after start)."""
        return DeadLetterStore(self.db.sessions)


def build_extraction(settings: Settings, *, observer: JobObserver | None = None) -> ExtractionParts:
    """Build the extraction component with its worker.

    Args:
        settings: Process settings; ``database_url`` and ``nats_url`` are required, and with
            the worker on (``CONTEXTIQ_WORKER_ENABLED``) ``memory_addr``, ``sessions_addr``
            and (unless auth is off) ``jwt_secret``.
        observer: Where job starts and ends are reported; logs by default.

    Returns:
        The parts; ``parts.component`` goes to the server.
    """
    db = PostgresResource(
        settings,
        script_location=MIGRATIONS,
        schema=models.SCHEMA,
        version_table=models.VERSION_TABLE,
    )
    bus = NatsResource(
        settings, client_name="contextiq-extraction", stream=jobs.STREAM, subjects=jobs.SUBJECTS
    )
    llm = LlmClient(
        api_base=settings.llm_api_base,
        api_key=settings.llm_api_key,
        timeout_s=settings.llm_timeout_s,
        max_attempts=settings.llm_max_attempts,
    )
    clients: ServiceClients | None = None
    if settings.worker_enabled:
        if not settings.memory_addr or not settings.sessions_addr:
            raise FailedPrecondition(
                "the memory generation worker needs CONTEXTIQ_MEMORY_ADDR and "
                "CONTEXTIQ_SESSIONS_ADDR (host:port of those services); set them or "
                "CONTEXTIQ_WORKER_ENABLED=false"
            )
        clients = ServiceClients(
            settings, memory_addr=settings.memory_addr, sessions_addr=settings.sessions_addr
        )
    parts = ExtractionParts(
        component=Component(name="extraction", services=[]),
        db=db,
        bus=bus,
        llm=llm,
        runners=[],
        clients=clients,
    )
    warm_up: list[asyncio.Task[None]] = []
    learners: list[LearnHandler] = []

    async def start() -> None:
        await db.start()
        await bus.start()
        # LiteLLM takes seconds to import: load it in the background, off the start-up path.
        warm_up.append(asyncio.create_task(asyncio.to_thread(llm.warm_up)))
        if clients is not None:
            await clients.start()
            handler = GenerateMemoriesHandler(clients, llm, default_model=settings.llm_model)
            runner = JobRunner(
                bus.jetstream,
                generate_memories_spec(handler),
                runner_config(settings),
                dead_letters=parts.dead_letters,
                observer=observer,
            )
            await runner.start()
            parts.runners.append(runner)
            learn = LearnHandler(
                clients,
                llm,
                memory_addr=settings.memory_addr or "",
                default_model=settings.llm_model,
            )
            await learn.start()
            learners.append(learn)
            learn_runner = JobRunner(
                bus.jetstream,
                learn_procedural_spec(learn),
                runner_config(settings),
                dead_letters=parts.dead_letters,
                observer=observer,
            )
            await learn_runner.start()
            parts.runners.append(learn_runner)

    async def stop() -> None:
        while parts.runners:
            await parts.runners.pop().stop()
        while learners:
            await learners.pop().close()
        if clients is not None:
            await clients.close()
        for task in warm_up:
            await task
        await bus.stop()
        await db.stop()

    parts.component = Component(
        name="extraction",
        services=[
            service_spec(
                "contextiq.extraction.v1.ExtractionService",
                ExtractionServicer(llm, default_model=settings.llm_model),
                extraction_service_pb2_grpc.add_ExtractionServiceServicer_to_server,
            )
        ],
        on_start=start,
        on_stop=stop,
        health_checks={"postgres": db.ping, "nats": bus.ping},
    )
    return parts


def build_component(settings: Settings) -> Component:
    """Build the extraction component for a server process (see :func:`build_extraction`)."""
    return build_extraction(settings).component
