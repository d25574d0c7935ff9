"""Procedural search latency at 100,000 stored objects.

1. Load: N objects (default 100,000: 30% workflows, 30% skills, 40% trajectories) of one
   tenant across S team scopes (default 100), written straight into the stores: Postgres by
   COPY into the ``procedural`` schema, the embedded Qdrant engine by batched upserts. Texts
   are synthetic (templates filled with words drawn, Zipf, from the 5,000 most common whole
   words of the model's vocabulary, so they tokenize to real lengths). P of them (default
   10,000) are embedded for real by the service's ONNX model in batches; the other objects
   are variants of those (two words of their own, the vector nudged by noise, cosine ~0.96),
   since embedding 100,000 texts on two shared cores would take far longer than the search
   measurement (``--pool N`` embeds every object). Every text is BM25-encoded as the service
   does. Load, embedding and index build (HNSW, blocking ``optimize``) times are printed.
2. Search: top-10 SearchProcedural over gRPC, one at a time, each query a new text embedded
   inside the measured call: over every kind and scope of the tenant (all N objects), within
   one team scope, skills only with a skill type, and skills with a minimum success rate
   (a Postgres-resolved filter pushed into the index as an id set). p50 / p95 / p99 printed.

The server, the gRPC client and Postgres share this machine's cores.

Run: ``python -m bench.procedural_search [--objects N] [--scopes S] [--queries Q] [--pool P]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import grpc
import numpy as np

from bench.memory_scale import Corpus, _summary
from bench.memory_support import MemoryStack, memory_stack, token_metadata
from contextiq.procedural.v1 import procedural_service_pb2, procedural_service_pb2_grpc
from memory_svc.index.protocol import NEVER, IndexPoint
from memory_svc.procedural.convert import search_text
from memory_svc.procedural.indexing import BANK, topic_of
from memory_svc.procedural.validation import OUTCOMES, SKILL_TYPES
from memory_svc.scopes import pair_tokens, scope_key

TENANT: Final = "bench-procedural"
_CHUNK: Final = 5_000
_EMBED_BATCH: Final = 256
_SHARE: Final = {"workflow": 0.3, "skill": 0.3, "trajectory": 0.4}


class Texts:
    """Synthetic procedural objects."""

    def __init__(self, seed: int) -> None:
        self.corpus = Corpus(seed)
        self.rng = self.corpus.rng

    def words(self, n: int) -> list[str]:
        picks = self.rng.choice(len(self.corpus.words), size=n, p=self.corpus.weights)
        return [self.corpus.words[i] for i in picks]

    def phrase(self, n: int) -> str:
        return " ".join(self.words(n))

    def workflow(self) -> dict[str, Any]:
        steps = [
            {"order": i + 1, "action": f"{self.phrase(3)} the {self.phrase(2)}"}
            for i in range(int(self.rng.integers(2, 6)))
        ]
        return {
            "name": f"{self.phrase(2).capitalize()} {self.phrase(2)}",
            "description": f"How to {self.phrase(4)} when the {self.phrase(3)} {self.phrase(2)}.",
            "steps": steps,
        }

    def skill(self) -> dict[str, Any]:
        return {
            "name": f"{self.phrase(3).capitalize()}",
            "skill_type": SKILL_TYPES[int(self.rng.integers(0, len(SKILL_TYPES)))],
            "description": f"Use it to {self.phrase(5)} with the {self.phrase(2)} tool.",
            "implementation": f"{self.words(1)[0]}.{self.words(1)[0]}({self.phrase(3)})",
        }

    def trajectory(self) -> dict[str, Any]:
        steps = [
            {"action": f"{self.phrase(3)}", "observation": self.phrase(4)}
            for _ in range(int(self.rng.integers(1, 5)))
        ]
        return {
            "task_description": f"{self.phrase(4).capitalize()} for the {self.phrase(3)}",
            "outcome": OUTCOMES[int(self.rng.integers(0, len(OUTCOMES)))],
            "learning_points": [self.phrase(5)] if self.rng.random() < 0.5 else [],
            "steps": steps,
        }

    def query(self) -> str:
        return f"how to {self.phrase(4)} {self.phrase(2)}"


_COLUMNS: Final = {
    "workflow": ("workflows", ["name", "description", "steps"]),
    "skill": (
        "skills",
        [
            "name",
            "skill_type",
            "description",
            "implementation",
            "success_count",
            "failure_count",
            "success_rate",
        ],
    ),
    "trajectory": (
        "trajectories",
        ["task_description", "outcome", "learning_points", "steps", "agent_id"],
    ),
}
_COMMON: Final = [
    "id",
    "tenant_id",
    "scope",
    "scope_key",
    "created_at",
    "updated_at",
    "version",
    "embedding",
    "embedding_model",
    "index_dirty",
]
_JSON: Final = {"steps", "learning_points"}


async def _embed_pool(
    stack: MemoryStack, texts: Texts, *, size: int
) -> dict[str, list[tuple[dict[str, Any], np.ndarray]]]:
    """``size`` distinct objects, split by kind, embedded for real in batches."""
    parts = stack.parts.procedural
    assert parts is not None
    pool: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {}
    t = time.perf_counter()
    for kind, share in _SHARE.items():
        values = [getattr(texts, kind)() for _ in range(max(1, int(size * share)))]
        vectors = np.concatenate(
            [
                await parts.index.embed(
                    [search_text(kind, v) for v in values[i : i + _EMBED_BATCH]]
                )
                for i in range(0, len(values), _EMBED_BATCH)
            ]
        )
        pool[kind] = list(zip(values, vectors, strict=True))
    elapsed = time.perf_counter() - t
    print(
        f"embedding: {size:,} distinct texts by the ONNX model in {elapsed:.1f}s "
        f"({size / elapsed:,.0f} texts/s, batches of {_EMBED_BATCH})",
        flush=True,
    )
    return pool


def _variant(
    texts: Texts, template: tuple[dict[str, Any], np.ndarray]
) -> tuple[dict[str, Any], np.ndarray]:
    """A distinct object near a pool object: two words of its own, its vector nudged."""
    values = json.loads(json.dumps(template[0]))
    key = "task_description" if "task_description" in values else "name"
    values[key] = f"{values[key]} {texts.phrase(2)}"
    noisy = template[1] + 0.3 * texts.rng.normal(size=template[1].shape).astype(
        np.float32
    ) / np.sqrt(template[1].shape[0])
    vector: np.ndarray = (noisy / np.linalg.norm(noisy)).astype(np.float32)
    return values, vector


async def load(stack: MemoryStack, *, total: int, scopes: int, pool_size: int) -> None:
    """Write the set straight into Postgres (COPY) and the index (batched upserts).

    Objects are variants of ``pool_size`` distinct objects embedded for real (every object
    is embedded itself when ``pool_size >= total``): their own words, their vector close to
    the pool object's.
    """
    parts = stack.parts.procedural
    assert parts is not None
    texts = Texts(seed=11)
    index = parts.index
    collection = await index.collection()
    model = index.model
    pool = await _embed_pool(stack, texts, size=min(pool_size, total))
    dsn = stack.pg_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    now = datetime.now(UTC)
    pg_s = index_s = 0.0
    started = time.perf_counter()
    kinds = np.random.default_rng(3).choice(list(_SHARE), size=total, p=list(_SHARE.values()))
    seen = dict.fromkeys(_SHARE, 0)
    try:
        for start in range(0, total, _CHUNK):
            batch = []
            for j in range(start, min(total, start + _CHUNK)):
                kind = str(kinds[j])
                templates = pool[kind]
                template = templates[seen[kind] % len(templates)]
                values, vector = (
                    (template[0], template[1])
                    if seen[kind] < len(templates)
                    else _variant(texts, template)
                )
                seen[kind] += 1
                if kind == "skill":
                    successes = int(texts.rng.integers(0, 20))
                    failures = int(texts.rng.integers(0, 20))
                    values = {
                        **values,
                        "success_count": successes,
                        "failure_count": failures,
                        "success_rate": successes / (successes + failures)
                        if successes + failures
                        else 0.0,
                    }
                if kind == "trajectory":
                    values = {**values, "agent_id": f"agent-{j % 50}"}
                scope = {"team": f"team-{j % scopes}"}
                batch.append((kind, uuid.uuid4(), scope, values, vector))
            by_kind: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in _COLUMNS}
            points = []
            for kind, object_id, scope, values, vector in batch:
                extra = _COLUMNS[kind][1]
                by_kind[kind].append(
                    (
                        object_id,
                        TENANT,
                        json.dumps(scope),
                        scope_key(scope),
                        now,
                        now,
                        1,
                        vector.astype("<f4").tobytes(),
                        model,
                        False,
                        *(json.dumps(values[c]) if c in _JSON else values[c] for c in extra),
                    )
                )
                points.append(
                    IndexPoint(
                        id=object_id,
                        dense=vector,
                        sparse=index.keyword.document(search_text(kind, values)),
                        tenant_id=TENANT,
                        bank_id=BANK,
                        scope_key=scope_key(scope),
                        scope_pairs=pair_tokens(scope),
                        topic=topic_of(kind, values.get("skill_type", "")),
                        created_at=now.timestamp(),
                        updated_at=now.timestamp(),
                        expires_at=NEVER,
                        rank=float(values.get("success_rate", 0.0)),
                    )
                )
            t = time.perf_counter()
            for kind, records in by_kind.items():
                table, extra = _COLUMNS[kind]
                await connection.copy_records_to_table(
                    table, schema_name="procedural", records=records, columns=[*_COMMON, *extra]
                )
            pg_s += time.perf_counter() - t
            t = time.perf_counter()
            await stack.parts.index.upsert(collection, points)
            index_s += time.perf_counter() - t
            done = start + len(batch)
            if done % 20_000 == 0 or done == total:
                print(
                    f"  loaded {done:>7,} objects ({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
        for table in ("workflows", "skills", "trajectories"):
            await connection.execute(f"ANALYZE procedural.{table}")
    finally:
        await connection.close()
    print(f"load: Postgres COPY {pg_s:.1f}s, index upserts {index_s:.1f}s")
    t = time.perf_counter()
    await stack.parts.index.optimize()
    print(f"index build (HNSW, optimize): {time.perf_counter() - t:.1f}s")


async def search_latency(stack: MemoryStack, *, queries: int, scopes: int) -> None:
    """Sequential top-10 searches, four shapes."""
    texts = Texts(seed=99)
    who = token_metadata(TENANT)
    pb = procedural_service_pb2
    cases: list[tuple[str, dict[str, Any]]] = [
        ("all kinds, whole tenant", {}),
        ("all kinds, one team scope", {"scope": {"team": "team-7"}}),
        ("skills of one type", {"kinds": ["skill"], "skill_type": "tool_usage"}),
        ("skills, min_success_rate 0.9", {"min_success_rate": 0.9}),
    ]
    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = procedural_service_pb2_grpc.ProceduralServiceStub(channel)

        async def timed(text: str, fields: dict[str, Any]) -> tuple[float, int]:
            request = pb.SearchProceduralRequest(search_query=text, top_k=10, **fields)
            t = time.perf_counter()
            response = await stub.SearchProcedural(request, metadata=who)
            return time.perf_counter() - t, len(response.results)

        for _ in range(20):  # warm-up: connections, caches
            await timed(texts.query(), {})
        for label, fields in cases:
            samples = []
            hits = []
            for _ in range(queries):
                elapsed, found = await timed(texts.query(), fields)
                samples.append(elapsed)
                hits.append(found)
            print(_summary(f"top-10, {label}", samples))
            assert min(hits) > 0, f"a search returned nothing ({label})"


async def run(args: argparse.Namespace) -> None:
    print(
        f"procedural set: {args.objects:,} objects (30% workflows, 30% skills, 40% "
        f"trajectories), {args.scopes} team scopes; {args.queries} queries per case; "
        f"{min(args.pool, args.objects):,} embedded by the model, the rest variants of them"
    )
    async with memory_stack(durable=True, optimize_interval_s=3600.0) as stack:
        await load(stack, total=args.objects, scopes=args.scopes, pool_size=args.pool)
        await search_latency(stack, queries=args.queries, scopes=args.scopes)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``make bench`` and ``python -m bench.procedural_search``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--scopes", type=int, default=100)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--pool",
        type=int,
        default=10_000,
        help="distinct objects embedded by the model; the others are variants of them",
    )
    args = parser.parse_args(argv if argv is not None else [])
    asyncio.run(run(args))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
