"""Consolidation without a model: inline facts against their most similar memories.

Used for ``source_type = "facts"`` when no model is configured (DESIGN.md: "inline facts
still work"). Each fact is compared with its candidates' cosine similarities as returned by
``FindSimilarMemories``:

- **≥ 0.96: NOOP** — the same fact in other words or punctuation. Measured with the default
  local model (all-MiniLM-L6-v2): case and punctuation changes score 0.985 to 1.0, "birthday is
  March 3" vs "is on March 3rd" 0.965.
- **≥ 0.88: UPDATE** that memory with the new wording — a restatement or a changed detail:
  "prefers" vs "likes window seats" 0.924, "two cats" vs "three cats" 0.938, "name is Dana" vs
  "is called Dana" 0.946; the newer fact wins, as an LLM consolidation would decide.
- **below: CREATE** — different facts about the same subject stay apart: "window" vs "aisle
  seats" 0.755, "lives in Lisbon" vs "in Porto" 0.809, "blue" vs "green" 0.794. A wrong UPDATE
  destroys a memory, a wrong CREATE only leaves a near-duplicate, so the bar is set above
  those.

Other embedding models spread similarities differently; with a LiteLLM embedding model,
configure a model for consolidation instead. Each memory is updated by at most one fact per
job (the most similar); another fact close to it is created.
"""

from __future__ import annotations

from collections.abc import Sequence

from contextiq.memory.v1 import memory_job_service_pb2, memory_pb2

__all__ = ["NOOP_SIMILARITY", "UPDATE_SIMILARITY", "consolidate_by_similarity"]

NOOP_SIMILARITY = 0.96
UPDATE_SIMILARITY = 0.88


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def consolidate_by_similarity(
    facts: Sequence[memory_pb2.ExtractedFact],
    similar: Sequence[memory_job_service_pb2.SimilarMemories],
) -> list[memory_pb2.ConsolidationAction]:
    """Plan actions for ``facts`` from their candidates' similarities (see the module doc).

    Returns:
        One action per distinct fact: NOOP / UPDATE naming a candidate, or CREATE.
    """
    best: dict[int, tuple[str, float]] = {}
    for result in similar:
        ranked = sorted(
            zip(result.memories, result.similarities, strict=False), key=lambda p: -p[1]
        )
        if ranked:
            best[result.fact_index] = (ranked[0][0].id, float(ranked[0][1]))
    # The most similar fact of a memory wins its UPDATE.
    update_owner: dict[str, tuple[float, int]] = {}
    for index, (memory_id, score) in best.items():
        closer = memory_id not in update_owner or score > update_owner[memory_id][0]
        if UPDATE_SIMILARITY <= score < NOOP_SIMILARITY and closer:
            update_owner[memory_id] = (score, index)
    actions: list[memory_pb2.ConsolidationAction] = []
    created: dict[str, memory_pb2.ConsolidationAction] = {}
    for index, fact in enumerate(facts):
        memory_id, score = best.get(index, ("", 0.0))
        sources = list(fact.source_event_ids)
        if memory_id and score >= NOOP_SIMILARITY:
            actions.append(
                memory_pb2.ConsolidationAction(
                    action="NOOP",
                    memory_id=memory_id,
                    confidence=fact.confidence,
                    reason=f"already remembered (similarity {score:.3f})",
                    fact_indexes=[index],
                    source_event_ids=sources,
                )
            )
        elif memory_id and update_owner.get(memory_id, (0.0, -1))[1] == index:
            actions.append(
                memory_pb2.ConsolidationAction(
                    action="UPDATE",
                    memory_id=memory_id,
                    fact=fact.fact,
                    topic=fact.topic,
                    confidence=fact.confidence,
                    reason=f"restates or revises an existing memory (similarity {score:.3f})",
                    fact_indexes=[index],
                    source_event_ids=sources,
                )
            )
        else:
            key = _key(fact.fact)
            same = created.get(key)
            if same is not None:
                same.fact_indexes.append(index)
                same.source_event_ids.extend(s for s in sources if s not in same.source_event_ids)
                continue
            action = memory_pb2.ConsolidationAction(
                action="CREATE",
                fact=fact.fact,
                topic=fact.topic,
                confidence=fact.confidence,
                reason="no existing memory of the scope is this close",
                fact_indexes=[index],
                source_event_ids=sources,
            )
            created[key] = action
            actions.append(action)
    return actions
