"""Memory search latency at scale, and ingest rate through the API.

1. Load: N memories (default 1,000,000) across S scopes (default 10,000), one of which holds
   B of them (default 100,000), written straight into the stores: Postgres by COPY, the
   embedded Qdrant engine by batched upserts, with precomputed vectors (normalised random
   384-d vectors around 1,000 topic centroids, so that neighbourhoods exist as with real
   embeddings) and BM25 vectors of synthetic facts: ten words drawn (Zipf) from the 5,000
   most common whole words of the model's vocabulary, so texts tokenize to real lengths.
   Load time and index build time (HNSW, blocking ``optimize``) are printed.
2. Search: hybrid top-10 SearchMemories over gRPC, one at a time, in the big scope and in
   random small scopes; each query is a new text, embedded by the ONNX model inside the
   measured call. p50 / p95 / p99 printed, twice: with the page cache as the run found it
   (a reused set starts mostly on disk), then right after reading the set's files once (as
   a server whose working set stays in memory runs).
3. Ingest through the API, embedding included, on durable Postgres: M CreateMemory RPCs (64
   in flight), then M more memories by BatchCreateMemories (100 per call, 2 calls in flight);
   memories/s printed for each.

The server, the gRPC client and Postgres share this machine's cores.

Run: ``python -m bench.memory_scale [--memories N] [--scopes S] [--big B] [--queries Q]
[--ingest M] [--data-dir DIR]``. With ``--data-dir`` the loaded scale set is kept and reused
by the next run of the same shape (loading 1,000,000 takes most of an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np

from bench.memory_support import MemoryStack, memory_stack, token_metadata
from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from memory_svc.embedding_data import MINILM_TOKENIZER
from memory_svc.index.protocol import NEVER, IndexPoint
from memory_svc.scopes import pair_tokens, scope_key

DIMENSION = 384
_TOKENIZER = MINILM_TOKENIZER
MODEL = "local/all-MiniLM-L6-v2"
TENANT = "bench-scale"
_CHUNK = 20_000
_COLUMNS = [
    "id",
    "tenant_id",
    "bank_id",
    "scope",
    "scope_key",
    "fact",
    "topic",
    "confidence",
    "metadata",
    "source_session_id",
    "source_event_ids",
    "created_at",
    "updated_at",
    "version",
    "revision_count",
    "embedding",
    "embedding_model",
    "index_dirty",
]


class Corpus:
    """Synthetic facts and vectors."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        # Whole words of the model's own WordPiece vocabulary, in vocabulary order (roughly
        # by frequency): each is one token, so facts and queries have realistic lengths.
        vocab = json.loads(_TOKENIZER.read_text())["model"]["vocab"]
        words = sorted(
            (word for word in vocab if word.isascii() and word.isalpha() and len(word) >= 3),
            key=vocab.__getitem__,
        )
        self.words = words[:5_000]
        ranks = np.arange(1, len(self.words) + 1)
        self.weights = (1.0 / ranks) / np.sum(1.0 / ranks)
        centroids = self.rng.normal(size=(1_000, DIMENSION)).astype(np.float32)
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)

    def facts(self, n: int) -> list[str]:
        picks = self.rng.choice(len(self.words), size=(n, 10), p=self.weights)
        return ["The user " + " ".join(self.words[i] for i in row) + "." for row in picks]

    def vectors(self, n: int) -> np.ndarray:
        which = self.rng.integers(0, len(self.centroids), size=n)
        noisy = self.centroids[which] + 0.6 * self.rng.normal(size=(n, DIMENSION)).astype(
            np.float32
        ) / np.sqrt(DIMENSION)
        out: np.ndarray = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        return out


def _scope_of(i: int, *, big: int, scopes: int) -> dict[str, str]:
    if i < big:
        return {"user_id": "big"}
    return {"user_id": f"u{(i - big) % (scopes - 1)}"}


async def load(stack: MemoryStack, *, total: int, big: int, scopes: int) -> None:
    """Write the scale set straight into Postgres (COPY) and the index (batched upserts)."""
    corpus = Corpus()
    backend = stack.parts.backend
    collection = await backend.sync.collection(MODEL, DIMENSION)
    index = stack.parts.index
    dsn = stack.pg_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    pg_s = index_s = 0.0
    now = datetime.now(UTC)
    started = time.perf_counter()
    try:
        for start in range(0, total, _CHUNK):
            n = min(_CHUNK, total - start)
            facts = corpus.facts(n)
            vectors = corpus.vectors(n)
            ids = [uuid.uuid4() for _ in range(n)]
            scopes_of = [_scope_of(start + j, big=big, scopes=scopes) for j in range(n)]
            records = [
                (
                    ids[j],
                    TENANT,
                    "default",
                    json.dumps(scopes_of[j]),
                    scope_key(scopes_of[j]),
                    facts[j],
                    "",
                    1.0,
                    "{}",
                    "",
                    "[]",
                    now,
                    now,
                    1,
                    1,
                    vectors[j].astype("<f4").tobytes(),
                    MODEL,
                    False,
                )
                for j in range(n)
            ]
            t = time.perf_counter()
            await connection.copy_records_to_table(
                "memories", schema_name="memory", records=records, columns=_COLUMNS
            )
            pg_s += time.perf_counter() - t
            points = [
                IndexPoint(
                    id=ids[j],
                    dense=vectors[j],
                    sparse=backend.keyword.document(facts[j]),
                    tenant_id=TENANT,
                    bank_id="default",
                    scope_key=scope_key(scopes_of[j]),
                    scope_pairs=pair_tokens(scopes_of[j]),
                    topic="",
                    created_at=now.timestamp(),
                    updated_at=now.timestamp(),
                    expires_at=NEVER,
                )
                for j in range(n)
            ]
            t = time.perf_counter()
            await index.upsert(collection, points)
            index_s += time.perf_counter() - t
            done = start + n
            if done % 200_000 == 0 or done == total:
                print(
                    f"  loaded {done:>9,} memories ({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
        await connection.execute("ANALYZE memory.memories")
    finally:
        await connection.close()
    print(f"load: Postgres COPY {pg_s:.1f}s, index upserts {index_s:.1f}s")
    t = time.perf_counter()
    await index.optimize()
    print(f"index build (HNSW, optimize): {time.perf_counter() - t:.1f}s")


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return (
        f"{name:<34} n={len(samples):<4} p50 {pct(0.50):6.2f} ms  p95 {pct(0.95):6.2f} ms  "
        f"p99 {pct(0.99):6.2f} ms  mean {1000 * statistics.mean(samples):6.2f} ms"
    )


async def search_latency(
    stack: MemoryStack,
    *,
    queries: int,
    big: int,
    scopes: int,
    warmup: int = 20,
    note: str = "",
) -> None:
    """Sequential hybrid searches in the big scope and in small scopes (``note`` ends each
    printed line)."""
    corpus = Corpus(seed=99)
    who = token_metadata(TENANT)
    rng = random.Random(5)
    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)

        async def timed(
            scope: dict[str, str], text: str, mode: memory_service_pb2.SearchMode.ValueType
        ) -> tuple[float, int]:
            request = memory_service_pb2.SearchMemoriesRequest(
                scope=scope, search_query=text, top_k=10, mode=mode
            )
            t = time.perf_counter()
            response = await stub.SearchMemories(request, metadata=who)
            return time.perf_counter() - t, len(response.results)

        # Warm-up: connections, caches; a reused scale set starts with its files out of the
        # page cache, so it gets longer, over the big scope and small ones alike.
        for i in range(warmup):
            await timed(
                {"user_id": "big"} if i % 2 == 0 else {"user_id": f"u{rng.randrange(scopes - 1)}"},
                corpus.facts(1)[0][9:60],
                memory_service_pb2.SEARCH_MODE_HYBRID,
            )
        small_ids = [f"u{rng.randrange(scopes - 1)}" for _ in range(queries)]
        for label, mode in (
            ("hybrid", memory_service_pb2.SEARCH_MODE_HYBRID),
            ("dense", memory_service_pb2.SEARCH_MODE_DENSE),
        ):
            texts = corpus.facts(2 * queries)
            big_times = []
            small_times = []
            hits = []
            for i in range(queries):
                elapsed, found = await timed({"user_id": "big"}, texts[i][9:60], mode)
                big_times.append(elapsed)
                hits.append(found)
            for i, user in enumerate(small_ids):
                elapsed, found = await timed({"user_id": user}, texts[queries + i][9:60], mode)
                small_times.append(elapsed)
                hits.append(found)
            print(_summary(f"{label} top-10, big scope ({big:,})", big_times) + note)
            print(_summary(f"{label} top-10, small scopes", small_times) + note)
            assert min(hits) > 0, "a search returned nothing"


_BATCH = 100
_BATCHES_IN_FLIGHT = 2


def warm_page_cache(root: Path) -> tuple[int, float]:
    """Read every file under ``root`` once, so that the OS caches them; (bytes, seconds)."""
    started = time.perf_counter()
    total = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        with path.open("rb", buffering=0) as handle:
            while chunk := handle.read(16 << 20):
                total += len(chunk)
    return total, time.perf_counter() - started


async def ingest_rate(stack: MemoryStack, *, count: int, in_flight: int = 64) -> None:
    """Ingest through the API, twice: CreateMemory calls, then BatchCreateMemories calls."""
    corpus = Corpus(seed=123)
    facts = corpus.facts(2 * count + 400)
    who = token_metadata(f"{TENANT}-ingest")

    def request(i: int) -> memory_service_pb2.CreateMemoryRequest:
        return memory_service_pb2.CreateMemoryRequest(
            scope={"user_id": f"ingest-{i % 100}"}, fact=facts[i]
        )

    async with grpc.aio.insecure_channel(stack.address) as channel:
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> Any:
            async with gate:
                return await stub.CreateMemory(request(i), metadata=who)

        await asyncio.gather(*(one(i) for i in range(count, count + 200)))  # warm-up
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - t
        print(
            f"ingest, CreateMemory: {count:,} in {elapsed:.1f}s = {count / elapsed:,.0f} "
            f"memories/s ({in_flight} calls in flight, durable Postgres, embedding included)"
        )

        base = count + 200
        batch_gate = asyncio.Semaphore(_BATCHES_IN_FLIGHT)

        async def batch(start: int, end: int) -> Any:
            async with batch_gate:
                return await stub.BatchCreateMemories(
                    memory_service_pb2.BatchCreateMemoriesRequest(
                        requests=[request(i) for i in range(start, end)]
                    ),
                    metadata=who,
                )

        await batch(base + count, base + count + 200)  # warm-up
        t = time.perf_counter()
        await asyncio.gather(
            *(batch(base + i, base + min(i + _BATCH, count)) for i in range(0, count, _BATCH))
        )
        elapsed = time.perf_counter() - t
    print(
        f"ingest, BatchCreateMemories: {count:,} in {elapsed:.1f}s = "
        f"{count / elapsed:,.0f} memories/s ({_BATCH} per call, {_BATCHES_IN_FLIGHT} calls in "
        "flight, durable Postgres, embedding included)"
    )


def _shape(args: argparse.Namespace) -> dict[str, int]:
    return {"memories": args.memories, "scopes": args.scopes, "big": args.big}


def _data_dir(args: argparse.Namespace) -> tuple[Path | None, bool]:
    """The kept data directory (if any) and whether it holds this shape's scale set."""
    if not args.data_dir:
        return None, False
    workdir = Path(args.data_dir).resolve()
    marker = workdir / "scale-set.json"
    loaded = marker.exists() and json.loads(marker.read_text()) == _shape(args)
    if workdir.exists() and not loaded:
        shutil.rmtree(workdir)  # another shape, or a load that did not finish
    return workdir, loaded


def _mark_loaded(workdir: Path, args: argparse.Namespace) -> None:
    (workdir / "scale-set.json").write_text(json.dumps(_shape(args)))


async def run(args: argparse.Namespace) -> None:
    print(
        f"scale set: {args.memories:,} memories, {args.scopes:,} scopes, "
        f"big scope {args.big:,}; {args.queries} queries per case"
    )
    workdir, loaded = _data_dir(args)
    async with memory_stack(durable=True, workdir=workdir, optimize_interval_s=3600.0) as stack:
        if args.memories:
            if loaded:
                print(f"scale set reused from {workdir} (loaded by an earlier run)")
            else:
                await load(stack, total=args.memories, big=args.big, scopes=args.scopes)
                if workdir is not None:
                    _mark_loaded(workdir, args)
            await search_latency(
                stack,
                queries=args.queries,
                big=args.big,
                scopes=args.scopes,
                warmup=1_000 if loaded else 20,
                note="  (page cache as found)",
            )
            # The set is larger than what this machine keeps in its page cache for long (file
            # pages are dropped within a minute here, with most of the RAM free), so the
            # searches above read many pages from disk. Again with the set's files just read,
            # as a server whose working set stays in memory would run.
            size, seconds = await asyncio.to_thread(warm_page_cache, stack.workdir)
            print(
                f"read the set's files into the page cache: {size / 1e9:.1f} GB in {seconds:.1f}s"
            )
            await search_latency(
                stack,
                queries=args.queries,
                big=args.big,
                scopes=args.scopes,
                note="  (page cache warm)",
            )
        if args.ingest:
            await ingest_rate(stack, count=args.ingest)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``make bench`` and ``python -m bench.memory_scale``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--scopes", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ingest", type=int, default=6_000)
    parser.add_argument(
        "--data-dir",
        default="",
        help="keep Postgres and the index here; a later run with the same shape reuses them "
        "instead of loading again (the ingest phase writes to its own tenant)",
    )
    args = parser.parse_args(argv if argv is not None else [])
    if args.big > args.memories:
        parser.error("--big cannot exceed --memories")
    asyncio.run(run(args))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
