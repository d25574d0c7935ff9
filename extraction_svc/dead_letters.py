"""Dead letters: jobs the worker gave up on, kept where an operator can see and replay them.

A row is written when a message is poison (undecodable or invalid: retrying cannot help) or
when its last allowed delivery failed. It keeps everything needed to publish the message again
(subject, payload, headers) plus why it failed. Replaying publishes a copy with a new
``Nats-Msg-Id`` (the original id plus ``:replay-N``): the stream's duplicate window would
otherwise drop it as a copy of the original.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.rpc import status_pb2
from nats.js import JetStreamContext
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ciq_runtime.nats import MSG_ID_HEADER
from extraction_svc import models

__all__ = ["REPLAY_HEADER", "DeadLetter", "DeadLetterStore", "replay"]

#: Header on a replayed message: the dead letter it came from.
REPLAY_HEADER = "Ciq-Replay-Of"

d = models.dead_letters


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter."""

    id: int
    subject: str
    msg_id: str
    stream_sequence: int | None
    payload: bytes
    headers: dict[str, str]
    reason: str
    error: str
    error_status: status_pb2.Status | None
    attempts: int
    operation_name: str
    tenant_id: str
    operation_failed: bool
    published_at: datetime | None
    failed_at: datetime
    replay_count: int
    replayed_at: datetime | None

    def summary(self) -> dict[str, Any]:
        """JSON-ready view for the operator command (payload as its size)."""
        return {
            "id": self.id,
            "subject": self.subject,
            "msg_id": self.msg_id,
            "operation_name": self.operation_name,
            "tenant_id": self.tenant_id,
            "reason": self.reason,
            "error": self.error,
            "attempts": self.attempts,
            "operation_failed": self.operation_failed,
            "payload_bytes": len(self.payload),
            "published_at": self.published_at.isoformat() if self.published_at else None,
            "failed_at": self.failed_at.isoformat(),
            "replay_count": self.replay_count,
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
        }


def _row(row: Any) -> DeadLetter:
    status = None
    if row.error_status is not None:
        status = status_pb2.Status.FromString(row.error_status)
    return DeadLetter(
        id=row.id,
        subject=row.subject,
        msg_id=row.msg_id,
        stream_sequence=row.stream_sequence,
        payload=bytes(row.payload),
        headers=dict(row.headers or {}),
        reason=row.reason,
        error=row.error,
        error_status=status,
        attempts=row.attempts,
        operation_name=row.operation_name,
        tenant_id=row.tenant_id,
        operation_failed=row.operation_failed,
        published_at=row.published_at,
        failed_at=row.failed_at,
        replay_count=row.replay_count,
        replayed_at=row.replayed_at,
    )


class DeadLetterStore:
    """SQL over ``extraction.dead_letters``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Create the store over the service's session factory."""
        self._sessions = sessions

    async def record(
        self,
        *,
        subject: str,
        payload: bytes,
        headers: Mapping[str, str],
        reason: str,
        status: status_pb2.Status,
        attempts: int,
        stream_sequence: int | None = None,
        operation_name: str = "",
        tenant_id: str = "",
        operation_failed: bool = False,
        published_at: datetime | None = None,
    ) -> int:
        """Insert a dead letter and return its id."""
        async with self._sessions() as session, session.begin():
            new_id = await session.scalar(
                insert(d)
                .values(
                    subject=subject,
                    msg_id=str(headers.get(MSG_ID_HEADER, "")),
                    stream_sequence=stream_sequence,
                    payload=payload,
                    headers=dict(headers),
                    reason=reason,
                    error=status.message,
                    error_status=status.SerializeToString(),
                    attempts=attempts,
                    operation_name=operation_name,
                    tenant_id=tenant_id,
                    operation_failed=operation_failed,
                    published_at=published_at,
                    failed_at=func.now(),
                )
                .returning(d.c.id)
            )
        return int(new_id)

    async def list(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, newest first; replayed ones only when asked."""
        stmt = select(d).order_by(d.c.id.desc()).limit(limit)
        if not include_replayed:
            stmt = stmt.where(d.c.replayed_at.is_(None))
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [_row(r) for r in rows]

    async def get(self, dead_letter_id: int) -> DeadLetter | None:
        """One dead letter, or None."""
        async with self._sessions() as session:
            row = (await session.execute(select(d).where(d.c.id == dead_letter_id))).first()
        return None if row is None else _row(row)

    async def mark_replayed(self, dead_letter_id: int) -> int:
        """Count one more replay; returns the new replay count."""
        async with self._sessions() as session, session.begin():
            count = await session.scalar(
                update(d)
                .where(d.c.id == dead_letter_id)
                .values(replay_count=d.c.replay_count + 1, replayed_at=datetime.now(UTC))
                .returning(d.c.replay_count)
            )
        return int(count or 0)


async def replay(js: JetStreamContext, store: DeadLetterStore, letter: DeadLetter) -> str:
    """Publish a dead letter again and record it; returns the new ``Nats-Msg-Id``.

    The headers are the original ones (trace context included) with a new message id and
    :data:`REPLAY_HEADER`; the payload is byte for byte the original.
    """
    original = letter.msg_id or f"dead-letter-{letter.id}"
    msg_id = f"{original}:replay-{letter.replay_count + 1}"
    headers = {**letter.headers, MSG_ID_HEADER: msg_id, REPLAY_HEADER: str(letter.id)}
    await js.publish(letter.subject, letter.payload, headers=headers, timeout=10.0)
    await store.mark_replayed(letter.id)
    return msg_id
