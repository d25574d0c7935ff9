"""``python -m ciq_runtime.migrate``: upgrade every service's Postgres schema to its head.

Each service also migrates its own schema when it starts; this command does the same work
once, ahead of a rollout (the Helm chart runs it as a pre-install/pre-upgrade Job), so new
pods start on an already migrated database. It reads ``DATABASE_URL`` (and the log settings)
like the services do, takes the same per-schema advisory locks, and is safe to run while
services are starting or running.

Usage: ``python -m ciq_runtime.migrate [SCHEMA ...]`` (default: every schema, in order).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

from ciq_runtime.db import run_migrations
from ciq_runtime.logging import configure_logging, redact_text
from ciq_runtime.settings import ConfigError, Settings

__all__ = ["MODELS_MODULES", "MigrationTarget", "main", "migrate", "targets"]

log = logging.getLogger(__name__)

#: Each schema's owner: a ``models`` module with ``SCHEMA`` and ``VERSION_TABLE`` whose
#: package holds the Alembic folder ``migrations/``. Migrated in this order.
MODELS_MODULES: Final = (
    "sessions_svc.models",
    "sessions_svc.apikeys.models",
    "memory_svc.models",
    "memory_svc.procedural.models",
    "extraction_svc.models",
)


@dataclass(frozen=True, slots=True)
class MigrationTarget:
    """One service schema and where its migrations live.

    Attributes:
        schema: The Postgres schema, e.g. ``"sessions"``.
        version_table: Its Alembic version table (inside ``schema``).
        script_location: The Alembic folder (``env.py`` and ``versions/``).
    """

    schema: str
    version_table: str
    script_location: Path


def targets() -> tuple[MigrationTarget, ...]:
    """Every service schema, in migration order.

    Only the ``models`` modules are imported (table definitions), never the servicers.

    Returns:
        One target per entry of :data:`MODELS_MODULES`.

    Raises:
        TypeError: If a models module lacks string ``SCHEMA`` / ``VERSION_TABLE``.
    """
    found: list[MigrationTarget] = []
    for name in MODELS_MODULES:
        module = importlib.import_module(name)
        schema = getattr(module, "SCHEMA", None)
        version_table = getattr(module, "VERSION_TABLE", None)
        if not isinstance(schema, str) or not isinstance(version_table, str):
            raise TypeError(f"{name} must define SCHEMA and VERSION_TABLE as strings")
        if module.__file__ is None:
            raise TypeError(f"{name} has no file, so no migrations folder")
        location = Path(module.__file__).parent / "migrations"
        found.append(MigrationTarget(schema, version_table, location))
    return tuple(found)


async def migrate(url: str, only: Sequence[str] = ()) -> list[str]:
    """Upgrade the chosen schemas (all by default) to their heads, one after the other.

    Args:
        url: Postgres URL in any form :class:`Settings` accepts.
        only: Schema names to migrate; empty means every schema.

    Returns:
        The schemas migrated, in order.

    Raises:
        ValueError: If ``only`` names an unknown schema.
    """
    every = targets()
    unknown = sorted(set(only) - {t.schema for t in every})
    if unknown:
        raise ValueError(f"unknown schema(s) {', '.join(unknown)}")
    chosen = [t for t in every if not only or t.schema in only]
    for target in chosen:
        await run_migrations(
            url=url,
            script_location=target.script_location,
            schema=target.schema,
            version_table=target.version_table,
        )
    return [t.schema for t in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ciq_runtime.migrate``.

    Args:
        argv: Command-line arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns:
        The exit status: 0 when every chosen schema is at its head, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m ciq_runtime.migrate",
        description="Upgrade the services' Postgres schemas (DATABASE_URL) to their heads.",
    )
    parser.add_argument("schemas", nargs="*", metavar="SCHEMA", help="default: every schema")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(service_name="migrate")
        if settings.database_url is None:
            raise ConfigError(
                "DATABASE_URL is not set: expected postgresql://user:password@host:port/dbname"
            )
        configure_logging(service="migrate", level=settings.log_level, fmt=settings.log_format)
        done = asyncio.run(migrate(settings.database_url, args.schemas))
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    except (OSError, SQLAlchemyError) as exc:
        cause = getattr(exc, "orig", None) or exc
        first_line = (str(cause).strip().splitlines() or [repr(cause)])[0]
        # Driver errors may quote the URL, password included.
        return _fail(redact_text(f"migration failed: {type(cause).__name__}: {first_line}"))
    log.info("migrated %s", ", ".join(done), extra={"schemas": done})
    return 0


def _fail(message: str) -> int:
    print(f"contextiq: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
