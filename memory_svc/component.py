"""Assembles the memory service: its servicers, its database and their lifecycle."""

from __future__ import annotations

from pathlib import Path

from google.longrunning import operations_pb2_grpc

from ciq_runtime.component_kit import PostgresResource, service_spec
from ciq_runtime.server import Component
from ciq_runtime.settings import Settings
from contextiq.memory.v1 import memory_job_service_pb2_grpc, memory_service_pb2_grpc
from contextiq.procedural.v1 import procedural_service_pb2_grpc
from memory_svc import models
from memory_svc.servicer import (
    MemoryBankServicer,
    MemoryJobServicer,
    MemoryServicer,
    OperationsServicer,
    ProceduralServicer,
)

MIGRATIONS = Path(__file__).parent / "migrations"


def build_component(settings: Settings) -> Component:
    """Build the memory component for a server process.

    Args:
        settings: Process settings; ``database_url`` is required.

    Returns:
        The component: Memory, MemoryBank, MemoryJob, Procedural and Operations services plus
        the Postgres engine they share, migrated on start.
    """
    db = PostgresResource(
        settings,
        script_location=MIGRATIONS,
        schema=models.SCHEMA,
        version_table=models.VERSION_TABLE,
    )
    return Component(
        name="memory",
        services=[
            service_spec(
                "contextiq.memory.v1.MemoryService",
                MemoryServicer(),  # type: ignore[abstract]  # base answers UNIMPLEMENTED
                memory_service_pb2_grpc.add_MemoryServiceServicer_to_server,
            ),
            service_spec(
                "contextiq.memory.v1.MemoryBankService",
                MemoryBankServicer(),  # type: ignore[abstract]  # base answers UNIMPLEMENTED
                memory_service_pb2_grpc.add_MemoryBankServiceServicer_to_server,
            ),
            service_spec(
                "contextiq.memory.v1.MemoryJobService",
                MemoryJobServicer(),  # type: ignore[abstract]  # base answers UNIMPLEMENTED
                memory_job_service_pb2_grpc.add_MemoryJobServiceServicer_to_server,
            ),
            service_spec(
                "contextiq.procedural.v1.ProceduralService",
                ProceduralServicer(),  # type: ignore[abstract]  # base answers UNIMPLEMENTED
                procedural_service_pb2_grpc.add_ProceduralServiceServicer_to_server,
            ),
            service_spec(
                "google.longrunning.Operations",
                OperationsServicer(),
                operations_pb2_grpc.add_OperationsServicer_to_server,
            ),
        ],
        on_start=db.start,
        on_stop=db.stop,
        health_checks={"postgres": db.ping},
    )
