"""TTL sweeper: purges expired memories from Postgres and the index.

Expired memories vanish from reads at once (every query checks ``expires_at > now``); the
sweeper only reclaims space. It hard-deletes the rows but keeps their revisions: the history
(and ``as_of`` reads of the time before expiry) stays available, and each revision carries the
``expires_at`` that made the memory disappear, so no extra revision is written.
"""

from __future__ import annotations

import logging
from typing import Final

from sqlalchemy import delete, func, select

from ciq_runtime.db import transaction
from memory_svc import models
from memory_svc.backend import Backend

__all__ = ["sweep_expired"]

log = logging.getLogger(__name__)

m = models.memories
_BATCH: Final = 1000


async def sweep_expired(backend: Backend, *, max_batches: int = 100) -> int:
    """Delete expired memories in batches; returns how many were purged."""
    purged = 0
    for _ in range(max_batches):
        now = backend.clock()
        async with transaction(backend.sessions) as session:
            expired = (
                select(m.c.id)
                .where(m.c.expires_at <= now, m.c.deleted_at.is_(None))
                .limit(_BATCH)
                .with_for_update(skip_locked=True)
            )
            rows = (
                await session.execute(
                    delete(m)
                    .where(m.c.id.in_(expired.scalar_subquery()))
                    .returning(
                        m.c.id,
                        m.c.version,
                        m.c.embedding_model,
                        func.coalesce(func.octet_length(m.c.embedding), 0).label("embedding_bytes"),
                    )
                )
            ).all()
        if not rows:
            break
        # Rows are gone from Postgres, so nothing is left to mark clean; a failed index delete
        # leaves orphan points that hydration drops and the next reindex removes.
        await backend.sync.apply(deletes=rows)
        purged += len(rows)
        if len(rows) < _BATCH:
            break
    if purged:
        log.info("purged %d expired memories", purged)
    return purged
