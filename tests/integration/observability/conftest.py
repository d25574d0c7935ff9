"""Fixtures of the observability tests: a database of their own, Prometheus text parsing."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families


async def fresh_database(pg_url: str, pg_dsn: str) -> str:
    """Create an empty database in the test cluster and return its SQLAlchemy URL."""
    name = f"ciq_obs_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))


@pytest.fixture
async def own_db(pg_url: str, pg_dsn: str) -> str:
    """A database no other test writes to (exact per-tenant counts)."""
    return await fresh_database(pg_url, pg_dsn)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text page, keyed by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of one series; 0 when absent (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
