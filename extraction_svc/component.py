"""Assembles the extraction service: its servicer, NATS, its database and their lifecycle."""

from __future__ import annotations

from pathlib import Path

from ciq_runtime.component_kit import NatsResource, PostgresResource, service_spec
from ciq_runtime.server import Component
from ciq_runtime.settings import Settings
from contextiq.extraction.v1 import extraction_service_pb2_grpc
from extraction_svc import jobs, models
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

    async def start() -> None:
        await db.start()
        await bus.start()

    async def stop() -> None:
        await bus.stop()
        await db.stop()

    return Component(
        name="extraction",
        services=[
            service_spec(
                "contextiq.extraction.v1.ExtractionService",
                ExtractionServicer(),  # type: ignore[abstract]  # base answers UNIMPLEMENTED
                extraction_service_pb2_grpc.add_ExtractionServiceServicer_to_server,
            )
        ],
        on_start=start,
        on_stop=stop,
        health_checks={"postgres": db.ping, "nats": bus.ping},
    )
