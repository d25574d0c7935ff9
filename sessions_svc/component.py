"""Assembles the sessions service: its servicer, its database and their lifecycle."""

from __future__ import annotations

from pathlib import Path

from ciq_runtime.component_kit import PostgresResource, service_spec
from ciq_runtime.server import Component
from ciq_runtime.settings import Settings
from contextiq.sessions.v1 import session_service_pb2_grpc
from sessions_svc import models
from sessions_svc.servicer import SessionServicer

MIGRATIONS = Path(__file__).parent / "migrations"


def build_component(settings: Settings) -> Component:
    """Build the sessions component for a server process.

    Args:
        settings: Process settings; ``database_url`` is required.

    Returns:
        The component: SessionService plus the Postgres engine it owns, migrated on start.
    """
    db = PostgresResource(
        settings,
        script_location=MIGRATIONS,
        schema=models.SCHEMA,
        version_table=models.VERSION_TABLE,
    )
    return Component(
        name="sessions",
        services=[
            service_spec(
                "contextiq.sessions.v1.SessionService",
                SessionServicer(),  # type: ignore[abstract]  # base answers UNIMPLEMENTED
                session_service_pb2_grpc.add_SessionServiceServicer_to_server,
            )
        ],
        on_start=db.start,
        on_stop=db.stop,
        health_checks={"postgres": db.ping},
    )
