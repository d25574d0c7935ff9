"""Per-session generation watermarks: the newest event an applied generation processed.

One row per (tenant, bank, session, scope). ApplyGeneration advances it with compare-and-set
inside its transaction: the job states the watermark it read before extracting, and if another
generation moved it since, the apply fails with ABORTED and writes nothing -- two concurrent
generations of a session never both apply the same events.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ciq_runtime.errors import Aborted
from contextiq.memory.v1 import memory_job_service_pb2
from memory_svc.convert import timestamp
from memory_svc.generation.tables import generation_watermarks
from memory_svc.scopes import scope_key

__all__ = ["advance", "read"]

w = generation_watermarks


def _p(column: str) -> Any:
    return bindparam(f"p_{column}", type_=w.c[column].type)


# Built once (a reused statement keeps its SQL cache key); parameters from _params.
_KEY: Final = (
    (w.c.tenant_id == _p("tenant_id"))
    & (w.c.bank_id == _p("bank_id"))
    & (w.c.session_id == _p("session_id"))
    & (w.c.scope_key == _p("scope_key"))
)
_READ: Final = select(w).where(_KEY)
_MOVE: Final = (
    update(w)
    .where(_KEY, w.c.event_id == bindparam("p_expected", type_=w.c.event_id.type))
    .values(
        event_id=_p("event_id"), operation_name=_p("operation_name"), updated_at=_p("updated_at")
    )
    .returning(w.c.event_id)
)
_CREATE: Final = (
    pg_insert(w)
    .values(
        {
            c: _p(c)
            for c in (
                "tenant_id",
                "bank_id",
                "session_id",
                "scope_key",
                "scope",
                "event_id",
                "operation_name",
                "updated_at",
            )
        }
    )
    .on_conflict_do_nothing()
    .returning(w.c.event_id)
)


def _params(tenant_id: str, bank_id: str, session_id: str, scope: dict[str, str]) -> dict[str, Any]:
    return {
        "p_tenant_id": tenant_id,
        "p_bank_id": bank_id,
        "p_session_id": session_id,
        "p_scope_key": scope_key(scope),
    }


async def read(
    session: AsyncSession | AsyncConnection,
    *,
    tenant_id: str,
    bank_id: str,
    session_id: str,
    scope: dict[str, str],
) -> memory_job_service_pb2.GenerationWatermark:
    """The watermark; ``event_id`` empty when no generation was applied yet."""
    row = (
        await session.execute(_READ, _params(tenant_id, bank_id, session_id, scope))
    ).one_or_none()
    message = memory_job_service_pb2.GenerationWatermark(session_id=session_id)
    if row is not None:
        message.event_id = row.event_id
        message.operation_name = row.operation_name
        message.update_time.CopyFrom(timestamp(row.updated_at))
    return message


async def advance(
    session: AsyncSession,
    *,
    tenant_id: str,
    bank_id: str,
    session_id: str,
    scope: dict[str, str],
    expected: str,
    event_id: str,
    operation_name: str,
    now: datetime,
) -> None:
    """Compare-and-set the watermark from ``expected`` ("" = none yet) to ``event_id``.

    Raises:
        Aborted: The stored watermark is not ``expected``; the message names the current one.
    """
    params = _params(tenant_id, bank_id, session_id, scope)
    params.update(p_event_id=event_id, p_operation_name=operation_name, p_updated_at=now)
    if expected:
        params["p_expected"] = expected
        moved = (await session.execute(_MOVE, params)).one_or_none()
    else:
        params["p_scope"] = scope
        moved = (await session.execute(_CREATE, params)).one_or_none()
    if moved is not None:
        return
    current = await read(
        session, tenant_id=tenant_id, bank_id=bank_id, session_id=session_id, scope=scope
    )
    raise Aborted(
        f"the generation watermark of session {session_id!r} moved: it is "
        f"{current.event_id or '(none)'!r} (set by {current.operation_name or 'nobody'}), "
        f"not {expected or '(none)'!r} as read by this job; nothing was applied -- re-read "
        "the watermark and extract the events after it",
        reason="WATERMARK_MOVED",
        metadata={
            "current_watermark_event_id": current.event_id,
            "expected_watermark_event_id": expected,
        },
    )
