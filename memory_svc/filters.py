"""AIP-160 filter allow-lists of ListMemories, PurgeMemories and SearchMemories."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, true

from ciq_runtime.errors import InvalidArgument
from ciq_runtime.filtering import FilterField, FilterFields, MapField, ValueKind, compile_filter

__all__ = ["list_filter", "purge_filter", "search_filter"]


def _list_fields(table: Any) -> FilterFields:
    return {
        "scope": MapField(table.c.scope),
        "topic": FilterField(table.c.topic),
        "source_session_id": FilterField(table.c.source_session_id),
        "metadata": MapField(table.c.metadata),
        "created_at": FilterField(table.c.created_at, ValueKind.TIMESTAMP),
        "updated_at": FilterField(table.c.updated_at, ValueKind.TIMESTAMP),
        "expires_at": FilterField(table.c.expires_at, ValueKind.TIMESTAMP, nullable=True),
    }


def _search_fields(table: Any) -> FilterFields:
    return {
        "topic": FilterField(table.c.topic),
        "source_session_id": FilterField(table.c.source_session_id),
        "metadata": MapField(table.c.metadata),
        "created_at": FilterField(table.c.created_at, ValueKind.TIMESTAMP),
        "updated_at": FilterField(table.c.updated_at, ValueKind.TIMESTAMP),
    }


def list_filter(text: str, table: Any) -> ColumnElement[bool]:
    """ListMemories' filter over ``table`` (``memories`` or an as-of snapshot)."""
    return compile_filter(text, _list_fields(table))


def search_filter(text: str, table: Any) -> ColumnElement[bool]:
    """SearchMemories' filter over ``table``."""
    return compile_filter(text, _search_fields(table))


def purge_filter(text: str, table: Any) -> ColumnElement[bool]:
    """PurgeMemories' filter: required, ``*`` for every memory of the bank."""
    if not text.strip():
        raise InvalidArgument(
            'filter is required; use "*" to purge every memory of the bank', field="filter"
        )
    if text.strip() == "*":
        return true()
    return compile_filter(text, _list_fields(table))
