"""AIP-160 filter allow-lists and AIP-158 pages of the procedural List RPCs.

Every listing is newest first (``created_at desc, id desc``); the page token carries the last
item's sort key and a fingerprint of the filter, so a token replayed with another filter is
rejected.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ciq_runtime.errors import InvalidArgument
from ciq_runtime.filtering import FilterField, FilterFields, MapField, ValueKind, compile_filter
from ciq_runtime.pagination import encode_page_token, page_request
from memory_svc.procedural import models

__all__ = ["FILTER_FIELDS", "Page", "list_page"]


def _fields(table: Table, names: Mapping[str, ValueKind | None]) -> FilterFields:
    out: dict[str, FilterField | MapField] = {}
    for name, kind in names.items():
        out[name] = MapField(table.c[name]) if kind is None else FilterField(table.c[name], kind)
    return out


_S = ValueKind.STRING
_T = ValueKind.TIMESTAMP
_N = ValueKind.NUMBER

#: Filterable fields per listing (``None`` marks a map field: ``scope.KEY``).
FILTER_FIELDS: dict[str, FilterFields] = {
    "workflow": _fields(
        models.workflows,
        {"name": _S, "agent_id": _S, "scope": None, "created_at": _T, "usage_count": _N},
    ),
    "skill": _fields(
        models.skills,
        {
            "skill_type": _S,
            "agent_id": _S,
            "scope": None,
            "name": _S,
            "success_rate": _N,
            "created_at": _T,
        },
    ),
    "trajectory": _fields(
        models.trajectories,
        {"agent_id": _S, "outcome": _S, "scope": None, "session_id": _S, "created_at": _T},
    ),
    "candidate": _fields(
        models.candidates,
        {"state": _S, "kind": _S, "operation_name": _S, "scope": None, "created_at": _T},
    ),
}


class Page:
    """One page of rows and the token of the next."""

    def __init__(self, rows: list[Any], next_page_token: str) -> None:
        """Hold the page."""
        self.rows = rows
        self.next_page_token = next_page_token


async def list_page(
    session: AsyncSession,
    *,
    table: Table,
    kind: str,
    tenant_id: str,
    filter_text: str,
    page_size: int,
    page_token: str,
    extra: ColumnElement[bool] | None = None,
    extra_params: Mapping[str, Any] | None = None,
    columns: Callable[[Table], list[Any]] | None = None,
) -> Page:
    """Read one page of a tenant's objects, newest first.

    Args:
        session: Open session.
        table: The table listed.
        kind: Key of :data:`FILTER_FIELDS`.
        tenant_id: The caller's tenant.
        filter_text: The request's AIP-160 filter.
        page_size: Requested size (0: default 50; capped at 1000; negative rejected).
        page_token: Token of the previous page, or "".
        extra: Further condition (request shorthands such as ``skill_type``).
        extra_params: Values of those shorthands (part of the token's fingerprint).
        columns: Columns to read; every column but the embedding by default.

    Raises:
        InvalidArgument: Bad filter, page size or token.
    """
    where = compile_filter(filter_text, FILTER_FIELDS[kind])
    params = {"filter": filter_text, **(extra_params or {})}
    page = page_request(page_size=page_size, page_token=page_token, params=params)
    chosen = columns(table) if columns else [c for c in table.c if c.name != "embedding"]
    statement = select(*chosen).where(table.c.tenant_id == tenant_id, where)
    if extra is not None:
        statement = statement.where(extra)
    if page.after is not None:
        stamp, last_id = _after_key(page.after)
        statement = statement.where(
            func.row(table.c.created_at, table.c.id) < func.row(stamp, last_id)
        )
    statement = statement.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(
        page.size + 1
    )
    rows = list((await session.execute(statement)).all())
    token = ""
    if len(rows) > page.size:
        last = rows[page.size - 1]
        token = encode_page_token(
            last_sort_key=[last.created_at.isoformat(), str(last.id)], params=params
        )
    return Page(rows[: page.size], token)


def _after_key(after: list[Any]) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, last_id = after
        return datetime.fromisoformat(stamp), uuid.UUID(last_id)
    except (TypeError, ValueError):
        raise InvalidArgument("page_token is malformed", field="page_token") from None
