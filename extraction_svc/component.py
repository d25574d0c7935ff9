"""Assembles the extraction service: its servicer, NATS, its database and their lifecycle."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ciq_runtime.component_kit import NatsResource, PostgresResource, service_spec
from ciq_runtime.server import Component
from ciq_runtime.settings import Settings
from contextiq.extraction.v1 import extraction_service_pb2_grpc
from extraction_svc import jobs, models
from extraction_svc.llm import LlmClient
from extraction_svc.servicer import ExtractionServicer

MIGRATIONS = Path(__file__).parent / "migrations"


def build_component(settings: Settings) -> Component:
    """Build the extraction component for a server process.

    Args:
        settings: Process settings; ``database_url`` and ``nats_url`` are required.

    Returns:
        The component: ExtractionService, the Postgres engine of its dead-letter records and
        the NATS connection with the job stream ensured on start.
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
    warm_up: list[asyncio.Task[None]] = []

    async def start() -> None:
        await db.start()
        await bus.start()
        # LiteLLM takes seconds to import: load it in the background, off the start-up path.
        warm_up.append(asyncio.create_task(asyncio.to_thread(llm.warm_up)))

    async def stop() -> None:
        for task in warm_up:
            await task
        await bus.stop()
        await db.stop()

    return Component(
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
