"""TTL sweeper: purges expired sessions with their events, in batches, in the background.

Expired sessions are already invisible (every query checks ``expires_at``); the sweeper only
reclaims their space. It runs in every replica; ``FOR UPDATE SKIP LOCKED`` keeps replicas from
working on the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ciq_runtime.errors import ContextIQError
from sessions_svc.repository import SessionRepository

__all__ = ["Sweeper"]

log = logging.getLogger(__name__)


class Sweeper:
    """Deletes expired sessions every ``interval_s`` seconds."""

    def __init__(
        self, repo: SessionRepository, *, interval_s: float, batch_size: int = 200
    ) -> None:
        """Describe the sweeper; :meth:`start` runs it.

        Args:
            repo: Where to delete.
            interval_s: Pause between two sweeps.
            batch_size: Sessions deleted per transaction (their events go with them), so that
                one sweep never holds locks on a huge set of rows.
        """
        if interval_s <= 0 or batch_size <= 0:
            raise ValueError("interval_s and batch_size must be positive")
        self._repo = repo
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> tuple[int, int]:
        """Delete every session expired by now, batch after batch.

        Returns:
            (sessions deleted, events deleted).
        """
        sessions = events = 0
        while True:
            batch_sessions, batch_events = await self._repo.purge_expired(
                batch_size=self._batch_size
            )
            sessions += batch_sessions
            events += batch_events
            if batch_sessions < self._batch_size:
                break
        if sessions:
            log.info(
                "purged %d expired sessions with %d events",
                sessions,
                events,
                extra={"purged_sessions": sessions, "purged_events": events},
            )
        return sessions, events

    def start(self) -> None:
        """Run sweeps in the background until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sessions-ttl-sweeper")

    async def stop(self) -> None:
        """Stop the background sweeps (a sweep in progress rolls back its current batch)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except (ContextIQError, OSError) as exc:
                # The database may be briefly away; the next round tries again.
                log.warning("TTL sweep failed: %s", exc)
            except Exception:
                log.exception("TTL sweep failed")
            await asyncio.sleep(self._interval_s)
