"""AIP-160 filters compiled to SQLAlchemy: grammar, typing, allow-list and errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import BigInteger, Boolean, Column, DateTime, MetaData, Table, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, UUID

from ciq_runtime.errors import InvalidArgument
from ciq_runtime.filtering import FilterField, MapField, ValueKind, compile_filter

T = Table(
    "t",
    MetaData(),
    Column("name", Text),
    Column("count", BigInteger),
    Column("done", Boolean),
    Column("created", DateTime(timezone=True)),
    Column("parent", UUID(as_uuid=True), nullable=True),
    Column("labels", JSONB),
)
FIELDS: dict[str, FilterField | MapField] = {
    "name": FilterField(T.c.name),
    "count": FilterField(T.c.count, ValueKind.NUMBER),
    "done": FilterField(T.c.done, ValueKind.BOOL),
    "created": FilterField(T.c.created, ValueKind.TIMESTAMP),
    "parent": FilterField(T.c.parent, ValueKind.UUID, nullable=True),
    "labels": MapField(T.c.labels),
}


def sql(text: str) -> tuple[str, list[Any]]:
    compiled = compile_filter(text, FIELDS).compile(
        dialect=postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    )
    params = compiled.construct_params()
    return str(compiled), [params[name] for name in compiled.positiontup or []]


def test_empty_filter_matches_everything() -> None:
    assert sql("")[0] == "true"
    assert sql("   ")[0] == "true"


@pytest.mark.parametrize(
    ("text", "expected_sql", "params"),
    [
        ('name = "a"', "t.name = $1::VARCHAR", ["a"]),
        ("name = a", "t.name = $1::VARCHAR", ["a"]),
        ("name != 'a b'", "t.name != $1::VARCHAR", ["a b"]),
        ("count >= 3", "t.count >= $1::BIGINT", [3]),
        ("count < -2.5", "t.count < $1::FLOAT", [-2.5]),
        ("done = true", "t.done = true", []),
        ('name = "ro*"', "t.name LIKE $1::VARCHAR || '%' ESCAPE '/'", ["ro"]),
        ('name = "50%_*"', "t.name LIKE $1::VARCHAR || '%' ESCAPE '/'", ["50/%/_"]),
        ("labels.team = x", "t.labels @> $1::JSONB", [{"team": "x"}]),
        ("labels:team", "t.labels ? $1::VARCHAR", ["team"]),
        ("labels.team:*", "t.labels ? $1::VARCHAR", ["team"]),
        ("parent:*", "t.parent IS NOT NULL", []),
    ],
)
def test_restrictions(text: str, expected_sql: str, params: list[Any]) -> None:
    assert sql(text) == (expected_sql, params)


def test_timestamps_and_uuids_are_typed() -> None:
    text, params = sql('created > "2025-01-31T12:00:00Z"')
    assert text == "t.created > $1::TIMESTAMP WITH TIME ZONE"
    assert params == [datetime(2025, 1, 31, 12, tzinfo=UTC)]
    pid = uuid.uuid4()
    assert sql(f'parent = "{pid}"') == ("t.parent IS NOT NULL AND t.parent = $1::UUID", [pid])


def test_nullable_fields_use_two_valued_logic() -> None:
    pid = uuid.uuid4()
    assert sql(f'parent != "{pid}"')[0] == "t.parent IS NULL OR t.parent != $1::UUID"
    assert sql(f'NOT parent = "{pid}"')[0] == "NOT (t.parent IS NOT NULL AND t.parent = $1::UUID)"


def test_or_binds_tighter_than_and() -> None:
    text, _ = sql("name = a AND count = 1 OR count = 2")
    assert text == "t.name = $1::VARCHAR AND (t.count = $2::BIGINT OR t.count = $3::BIGINT)"


def test_parentheses_not_minus_and_juxtaposition() -> None:
    assert sql("(name = a OR name = b) count = 1")[0] == (
        "(t.name = $1::VARCHAR OR t.name = $2::VARCHAR) AND t.count = $3::BIGINT"
    )
    assert sql("-name = a")[0] == "t.name != $1::VARCHAR"
    assert sql("NOT (count > 1 AND count < 5)")[0] == (
        "NOT (t.count > $1::BIGINT AND t.count < $2::BIGINT)"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("colour = red", "unknown field 'colour'"),
        ("name", "must be compared to a value"),
        ("name =", "expected a value after '='"),
        ("name = AND", "quote it"),
        ("(name = a", "expected ')'"),
        ("name = a)", "expected AND, OR or the end"),
        ('name = "open', "is not closed"),
        ("name = a & b", "unexpected character '&'"),
        ("count = many", "takes a number"),
        ("done = maybe", "takes true or false"),
        ("done > true", "not supported for boolean"),
        ('created < "yesterday"', "RFC 3339"),
        ('parent = "p-1"', "takes a UUID"),
        ("labels = x", "is a map"),
        ("fn(name)", "functions are not supported"),
        ("name = 'a\\q'", "unknown escape"),
        ("(" * 20 + "name = a" + ")" * 20, "nested deeper"),
        (" AND ".join(["name = a"] * 70), "more than 64 comparisons"),
        ("x" * 5000, "longer than"),
    ],
)
def test_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        compile_filter(text, FIELDS)
    assert info.value.field == "filter"
    assert fragment in info.value.message


def test_error_field_is_configurable() -> None:
    with pytest.raises(InvalidArgument) as info:
        compile_filter("nope = 1", FIELDS, field="query.filter")
    assert info.value.field == "query.filter"


def test_unknown_field_lists_the_allowed_ones() -> None:
    with pytest.raises(InvalidArgument) as info:
        compile_filter("nope = 1", FIELDS)
    assert "labels.KEY" in info.value.message
    assert "created" in info.value.message
