"""SearchProcedural: one hybrid (dense + BM25) ranking over workflows, skills and trajectories.

Built from the memory search's parts: the query is embedded by the service's embedder and
BM25-encoded by the keyword encoder, the index returns the top candidates of each signal
under the tenant, scope and kinds (``topic`` in the payload: ``workflow``, ``trajectory``,
``skill:<type>``), the rankings are fused by weighted RRF (:mod:`memory_svc.fusion`), and the
winners are re-read from Postgres under every condition of the request, which drops anything
deleted or changed since the index saw it.

``min_success_rate`` over skills alone is a range filter on the points' ``rank`` (a skill's
success rate). Filters the index payload does not hold (``agent_id``, and
``min_success_rate`` next to other kinds) are resolved in Postgres first and pushed into the
index as an id set (at most :data:`_ID_PUSHDOWN` ids; beyond that the index over-fetches and
hydration drops non-matching candidates).

``skill_type`` and ``min_success_rate`` restrict skills: when either is set and ``kinds`` is
empty, only skills are searched; kinds named explicitly next to them are not filtered by them.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from ciq_runtime.errors import InvalidArgument
from contextiq.common.v1 import common_pb2
from contextiq.procedural.v1 import procedural_service_pb2
from memory_svc.backend import Backend
from memory_svc.embeddings import embedding_ahead
from memory_svc.fusion import weighted_rrf
from memory_svc.index.protocol import IndexFilter
from memory_svc.procedural import validation
from memory_svc.procedural.convert import skill_from_row, trajectory_from_row, workflow_from_row
from memory_svc.procedural.indexing import BANK, TABLES, topic_of
from memory_svc.procedural.store import ProceduralStore
from memory_svc.repository import scope_condition
from memory_svc.scopes import pair_tokens, scope_key, validate_scope
from memory_svc.validation import validate_query, validate_top_k

__all__ = ["ProceduralSearcher"]

_ID_PUSHDOWN: Final = 10_000
_ALL_TOPICS: Final = 2 + len(validation.SKILL_TYPES)
_CONVERT: Final = {
    "workflow": ("workflow", workflow_from_row),
    "skill": ("skill", skill_from_row),
    "trajectory": ("trajectory", trajectory_from_row),
}


def _candidates(top_k: int) -> int:
    return min(max(3 * top_k, 30), 300)


class ProceduralSearcher:
    """Runs SearchProcedural for the servicer."""

    def __init__(
        self, backend: Backend, store: ProceduralStore, engine: Callable[[], AsyncEngine]
    ) -> None:
        """Bind to the service's resources (``engine``: the ``procedural`` schema's)."""
        self._b = backend
        self._store = store
        self._engine = engine

    async def search(
        self, tenant_id: str, request: procedural_service_pb2.SearchProceduralRequest
    ) -> procedural_service_pb2.SearchProceduralResponse:
        """Validate and run a search."""
        query = validate_query(request.search_query)
        top_k = validate_top_k(request.top_k)
        kinds = validation.validate_kinds(request.kinds)
        scope = validate_scope(request.scope) if request.scope else None
        if request.scope_match not in (
            common_pb2.SCOPE_MATCH_UNSPECIFIED,
            common_pb2.SCOPE_MATCH_EXACT,
            common_pb2.SCOPE_MATCH_INCLUSIVE,
        ):
            raise InvalidArgument("scope_match is not a ScopeMatch", field="scope_match")
        inclusive = request.scope_match == common_pb2.SCOPE_MATCH_INCLUSIVE
        skill_type = (
            validation.skill_type(request.skill_type, field="skill_type")
            if request.skill_type
            else ""
        )
        if not math.isfinite(request.min_success_rate):
            raise InvalidArgument(
                "min_success_rate must be a finite number", field="min_success_rate"
            )
        min_rate = validation.validate_rate(request.min_success_rate, field="min_success_rate")
        agent = validation.agent_id(request.agent_id, field="agent_id")
        if (skill_type or min_rate > 0) and not request.kinds:
            kinds = ("skill",)

        def conditions_on(tables: dict[str, Any]) -> dict[str, ColumnElement[bool]]:
            return {
                kind: _condition(
                    kind, tables[kind], tenant_id, scope, inclusive, agent, skill_type, min_rate
                )
                for kind in kinds
            }

        topics: set[str] = set()
        for kind in kinds:
            if kind == "skill":
                types = (skill_type,) if skill_type else validation.SKILL_TYPES
                topics.update(topic_of("skill", name) for name in types)
            else:
                topics.add(kind)

        limit = _candidates(top_k)
        ids: frozenset[uuid.UUID] | None = None
        # Only skills searched: the success rate is a range filter inside the index (every
        # point's rank is its skill's rate); otherwise it is resolved in Postgres below.
        min_rank = min_rate if min_rate > 0 and kinds == ("skill",) else None
        if agent or (min_rate > 0 and min_rank is None):
            matching = await self._matching_ids(conditions_on(TABLES))
            if not matching:
                return procedural_service_pb2.SearchProceduralResponse()
            if len(matching) <= _ID_PUSHDOWN:
                ids = frozenset(matching)
            else:
                limit = min(limit * 4, 1000)

        index = self._store.index
        # The query is embedded while a connection is checked out: hydration starts at once.
        with embedding_ahead(index.embed([query])) as embedding:
            async with self._engine().connect() as connection:
                driver: Any = (await connection.get_raw_connection()).driver_connection
                dense = (await embedding)[0]
                collection = await index.collection()
                hits = await self._b.sync.index.search(
                    collection,
                    dense=dense,
                    sparse=index.keyword.query(query),
                    filter=IndexFilter(
                        tenant_id=tenant_id,
                        bank_id=BANK,
                        scope_key=None if scope is None or inclusive else scope_key(scope),
                        scope_pairs=pair_tokens(scope) if scope is not None and inclusive else [],
                        # Every point of the collection is one of the three kinds: no filter
                        # when all of them (every skill type) are searched.
                        topics=None if len(topics) == _ALL_TOPICS else frozenset(topics),
                        ids=ids,
                        min_rank=min_rank,
                    ),
                    limit=limit,
                )
                fused = weighted_rrf(hits.dense, hits.keyword)
                # Re-read the winners, best first, a few more than asked for (the index may hold
                # a few stale points): one round trip over every kind searched, on the driver.
                mode = "none" if scope is None else "inclusive" if inclusive else "exact"
                sql = _hydration_sql(kinds, mode)
                scope_value = (
                    None if scope is None else json.dumps(scope) if inclusive else scope_key(scope)
                )
                rows: dict[uuid.UUID, tuple[str, Any]] = {}
                start = 0
                while start < len(fused) and len(rows) < top_k:
                    chunk = [item.id for item in fused[start : start + top_k - len(rows) + 5]]
                    start += len(chunk)
                    found = await driver.fetch(
                        sql, tenant_id, chunk, scope_value, agent, skill_type, min_rate
                    )
                    for kind, document in found:
                        row = _row(json.loads(document))
                        rows[row.id] = (kind, row)
        response = procedural_service_pb2.SearchProceduralResponse()
        for item in fused[:start]:
            hit = rows.get(item.id)
            if hit is None:
                continue
            kind, row = hit
            field, convert = _CONVERT[kind]
            result = procedural_service_pb2.ProceduralSearchResult(
                kind=kind, score=item.score, matched_signals=item.signals
            )
            getattr(result, field).CopyFrom(convert(row))
            response.results.append(result)
            if len(response.results) == top_k:
                break
        return response

    async def _matching_ids(self, conditions: dict[str, ColumnElement[bool]]) -> list[uuid.UUID]:
        found: list[uuid.UUID] = []
        async with self._store.sessions() as session:
            for kind, condition in conditions.items():
                table = TABLES[kind]
                room = _ID_PUSHDOWN + 1 - len(found)
                if room <= 0:
                    break
                found.extend(
                    (
                        await session.execute(select(table.c.id).where(condition).limit(room))
                    ).scalars()
                )
        return found


def _condition(
    kind: str,
    table: Any,
    tenant_id: str,
    scope: dict[str, str] | None,
    inclusive: bool,
    agent: str,
    skill_type: str,
    min_rate: float,
) -> ColumnElement[bool]:
    """Every condition of the request on one kind's table (or its alias)."""
    parts: list[ColumnElement[bool]] = [
        table.c.tenant_id == tenant_id,
        scope_condition(scope, inclusive=inclusive, table=table),
    ]
    if agent:
        parts.append(table.c.agent_id == agent)
    if kind == "skill":
        if skill_type:
            parts.append(table.c.skill_type == skill_type)
        if min_rate > 0:
            parts.append(table.c.success_rate >= min_rate)
    return and_(true(), *parts)


_TIMES: Final = frozenset({"created_at", "updated_at", "last_used_at"})

# Hydration, prepared once per (kinds, scope mode) and run on the driver: the same conditions
# as _condition. Parameters: $1 tenant, $2 ids, $3 scope (key, JSON, or NULL), $4 agent ('' =
# any), $5 skill type ('' = any), $6 minimum success rate. Joining the id array drives the
# plan from the primary key.
_SCOPE_SQL: Final = {
    "none": "$3::text IS NULL",
    "exact": "x.scope_key = $3::text",
    "inclusive": "x.scope @> $3::text::jsonb",
}
_KIND_SQL: Final = """
SELECT '{kind}' AS kind, (to_jsonb(x) - 'embedding')::text AS doc
FROM unnest($2::uuid[]) AS wanted(id)
JOIN {table} AS x ON x.id = wanted.id
WHERE x.tenant_id = $1 AND {scope} AND ($4::text = '' OR x.agent_id = $4::text){extra}"""
_SKILL_SQL: Final = """
  AND ($5::text = '' OR x.skill_type = $5::text) AND x.success_rate >= $6::float8"""


@functools.cache
def _hydration_sql(kinds: tuple[str, ...], scope_mode: str) -> str:
    """One statement reading the rows of the given ids of every searched kind, as
    ``(kind, document)`` with the embedding left out."""
    parts = [
        _KIND_SQL.format(
            kind=kind,
            table=TABLES[kind].fullname,
            scope=_SCOPE_SQL[scope_mode],
            extra=_SKILL_SQL if kind == "skill" else "",
        )
        for kind in kinds
    ]
    if "skill" not in kinds:
        # Every parameter must appear in the statement for its type to be known.
        parts[-1] += "\n  AND $5::text IS NOT NULL AND $6::float8 IS NOT NULL"
    return "\nUNION ALL".join(parts)


def _row(document: dict[str, Any]) -> SimpleNamespace:
    """A row-like object of a JSON document (ids as UUIDs, times as datetimes)."""
    values: dict[str, Any] = {
        key: datetime.fromisoformat(value) if key in _TIMES and value is not None else value
        for key, value in document.items()
    }
    values["id"] = uuid.UUID(document["id"])
    return SimpleNamespace(**values)
