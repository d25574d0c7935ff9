"""Retrieval quality on LoCoMo (dev split): recall@5 / recall@10 of the evidence turns.

Each conversation's observations (LLM-written facts, each tagged with the dialogue turns it
came from) are created as memories of one scope through the real service (gRPC CreateMemory,
ONNX embeddings, embedded Qdrant engine). Every question of categories 1-4 is searched in its
conversation's scope (SearchMemories, top_k=10) in dense-only, keyword-only and hybrid mode;
a question's recall@k is the share of its evidence turns covered by the evidence of the top k
memories, averaged over the questions.

``--sweep`` also fuses each question's dense and keyword rankings (top 30 each, as the
service does) offline with other RRF constants and weights: the evidence behind
memory_svc.fusion's defaults.

Run: ``python -m bench.memory_locomo [--data PATH] [--sweep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from bench.memory_support import memory_stack, token_metadata
from contextiq.memory.v1 import memory_service_pb2, memory_service_pb2_grpc
from memory_svc.fusion import weighted_rrf
from memory_svc.index.protocol import Hit

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo-dev.json"
)
_EVIDENCE = re.compile(r"D\D*(\d+):(\d+)")
MODES = {
    "dense": memory_service_pb2.SEARCH_MODE_DENSE,
    "keyword": memory_service_pb2.SEARCH_MODE_KEYWORD,
    "hybrid": memory_service_pb2.SEARCH_MODE_HYBRID,
}


def evidence_ids(value: Any) -> set[str]:
    """Turn ids from a list, a comma/semicolon-joined string or a malformed id ("D:11:26")."""
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return {f"D{session}:{turn}" for session, turn in _EVIDENCE.findall(text)}


def load(path: Path) -> tuple[list[tuple[str, str, set[str]]], list[tuple[str, str, set[str]]]]:
    """(conversation, observation, evidence) facts and (conversation, question, evidence)."""
    data = json.loads(path.read_text())
    facts = []
    questions = []
    for sample in data:
        conversation = sample["sample_id"]
        for speakers in sample["observation"].values():
            for observations in speakers.values():
                for text, evidence in observations:
                    facts.append((conversation, text, evidence_ids(evidence)))
        for qa in sample["qa"]:
            evidence = evidence_ids(qa.get("evidence", []))
            if qa.get("category") in (1, 2, 3, 4) and evidence:
                questions.append((conversation, qa["question"], evidence))
    return facts, questions


def recall(ranked: Sequence[Sequence[set[str]]], questions: Sequence[Any], k: int) -> float:
    """Mean share of each question's evidence found in its top k results."""
    total = 0.0
    for evidence_lists, (_, _, wanted) in zip(ranked, questions, strict=True):
        found: set[str] = set().union(*evidence_lists[:k]) if evidence_lists else set()
        total += len(wanted & found) / len(wanted)
    return total / len(questions)


async def run(data: Path, *, sweep: bool) -> None:
    facts, questions = load(data)
    print(f"LoCoMo dev: {len(facts)} observations, {len(questions)} questions (categories 1-4)")
    async with memory_stack(durable=False) as stack:
        who = token_metadata(f"locomo-{uuid.uuid4().hex[:8]}")
        async with grpc.aio.insecure_channel(stack.address) as channel:
            stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
            gate = asyncio.Semaphore(32)
            evidence_of: dict[str, set[str]] = {}

            async def ingest(conversation: str, text: str, evidence: set[str]) -> None:
                metadata = struct_pb2.Struct()
                metadata.update({"evidence": ",".join(sorted(evidence))})
                async with gate:
                    memory = await stub.CreateMemory(
                        memory_service_pb2.CreateMemoryRequest(
                            scope={"conversation": conversation}, fact=text, metadata=metadata
                        ),
                        metadata=who,
                    )
                evidence_of[memory.id] = evidence

            started = time.perf_counter()
            await asyncio.gather(*(ingest(*fact) for fact in facts))
            print(f"ingested {len(facts)} memories in {time.perf_counter() - started:.1f}s")

            async def ranked(
                mode: memory_service_pb2.SearchMode.ValueType, top_k: int
            ) -> list[list[tuple[str, float]]]:
                out = []
                for conversation, question, _ in questions:
                    response = await stub.SearchMemories(
                        memory_service_pb2.SearchMemoriesRequest(
                            scope={"conversation": conversation},
                            search_query=question,
                            top_k=top_k,
                            mode=mode,
                        ),
                        metadata=who,
                    )
                    out.append([(r.memory.id, r.score) for r in response.results])
                return out

            print(f"{'mode':<10} {'recall@5':>9} {'recall@10':>10}")
            results: dict[str, list[list[tuple[str, float]]]] = {}
            for name, mode in MODES.items():
                results[name] = await ranked(mode, 10)
                lists = [[evidence_of[i] for i, _ in row] for row in results[name]]
                at5, at10 = recall(lists, questions, 5), recall(lists, questions, 10)
                print(f"{name:<10} {at5:>9.3f} {at10:>10.3f}")
            if sweep:
                dense = await ranked(MODES["dense"], 30)
                keyword = await ranked(MODES["keyword"], 30)
                print("\nweighted RRF sweep over the same rankings (top 30 per signal):")
                print(f"{'k':>5} {'w_dense':>8} {'w_kw':>6} {'recall@5':>9} {'recall@10':>10}")
                for k in (1.0, 2.0, 5.0, 10.0, 20.0, 60.0):
                    for w_dense, w_keyword in ((1.0, 1.0), (1.5, 1.0), (1.0, 1.5), (2.0, 1.0)):
                        fused = [
                            [
                                evidence_of[str(f.id)]
                                for f in weighted_rrf(
                                    [Hit(uuid.UUID(i), s) for i, s in d],
                                    [Hit(uuid.UUID(i), s) for i, s in kw],
                                    k=k,
                                    dense_weight=w_dense,
                                    keyword_weight=w_keyword,
                                )
                            ]
                            for d, kw in zip(dense, keyword, strict=True)
                        ]
                        at5, at10 = recall(fused, questions, 5), recall(fused, questions, 10)
                        print(
                            f"{k:>5.0f} {w_dense:>8.1f} {w_keyword:>6.1f} {at5:>9.3f} {at10:>10.3f}"
                        )


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``make bench`` and ``python -m bench.memory_locomo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sweep", action="store_true", help="print an RRF k/weight sweep")
    args = parser.parse_args(argv if argv is not None else [])
    if not args.data.exists():
        print(f"skipped: {args.data} not found (the LoCoMo dev split lives in shared/data)")
        return
    asyncio.run(run(args.data, sweep=args.sweep))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
