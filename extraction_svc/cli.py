"""Operator commands of the extraction service: ``python -m extraction_svc dead-letters …``.

::

    python -m extraction_svc dead-letters list [--all] [--json] [--limit N]
    python -m extraction_svc dead-letters show ID
    python -m extraction_svc dead-letters replay --id ID [--id ID …]
    python -m extraction_svc dead-letters replay --all

``list`` shows the dead letters not replayed yet (``--all``: every one). ``replay`` publishes
them again to their subject with a new ``Nats-Msg-Id`` and marks them replayed; ``--all``
replays every one not replayed yet. The command reads ``DATABASE_URL`` and ``NATS_URL`` like
the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ciq_runtime.component_kit import PostgresResource
from ciq_runtime.errors import ContextIQError
from ciq_runtime.nats import connect_nats
from ciq_runtime.settings import ConfigError, Settings
from extraction_svc import models
from extraction_svc.dead_letters import DeadLetter, DeadLetterStore, replay

MIGRATIONS = Path(__file__).parent / "migrations"

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m extraction_svc", description="Operator commands of the extraction service"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    letters = commands.add_parser("dead-letters", help="list and replay failed jobs")
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="dead letters not replayed yet, newest first")
    listing.add_argument("--all", action="store_true", help="include replayed ones")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--limit", type=int, default=100)
    show = actions.add_parser("show", help="one dead letter with its error status")
    show.add_argument("id", type=int)
    again = actions.add_parser("replay", help="publish dead letters again")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="a dead letter id")
    which.add_argument("--all", action="store_true", help="every one not replayed yet")
    return parser


def _line(letter: DeadLetter) -> str:
    replayed = f" replayed x{letter.replay_count}" if letter.replay_count else ""
    return (
        f"{letter.id:>6}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  {letter.reason:<20}  "
        f"attempts={letter.attempts}  {letter.operation_name or '-'}  "
        f"tenant={letter.tenant_id or '-'}{replayed}\n        {letter.error}"
    )


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    db = PostgresResource(
        settings,
        script_location=MIGRATIONS,
        schema=models.SCHEMA,
        version_table=models.VERSION_TABLE,
    )
    await db.start()
    try:
        store = DeadLetterStore(db.sessions)
        if args.action == "list":
            letters = await store.list(include_replayed=args.all, limit=args.limit)
            for letter in letters:
                print(json.dumps(letter.summary()) if args.json else _line(letter))
            if not args.json:
                print(f"{len(letters)} dead letter(s)")
            return 0
        if args.action == "show":
            found = await store.get(args.id)
            if found is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            print(json.dumps({**found.summary(), "headers": found.headers}, indent=2))
            return 0
        if args.all:
            targets = await store.list(include_replayed=False, limit=10_000)
        else:
            targets = []
            for letter_id in args.ids:
                found = await store.get(letter_id)
                if found is None:
                    print(f"no dead letter {letter_id}", file=sys.stderr)
                    return 1
                targets.append(found)
        if not settings.nats_url:
            print("NATS_URL is not set", file=sys.stderr)
            return 2
        nc = await connect_nats(settings.nats_url, name="contextiq-dead-letters")
        try:
            js = nc.jetstream()
            for letter in sorted(targets, key=lambda x: x.id):
                msg_id = await replay(js, store, letter)
                print(f"replayed {letter.id} on {letter.subject} as {msg_id}")
        finally:
            await nc.drain()
        print(f"{len(targets)} dead letter(s) replayed")
        return 0
    finally:
        await db.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run an operator command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(service_name="extraction-cli")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, settings))
    except ContextIQError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
