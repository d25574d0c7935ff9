"""The two model steps of memory generation: extract facts, consolidate them.

Both are plain async functions over an :class:`~extraction_svc.llm.LlmClient`, used by the
ExtractionService RPCs and by the generation worker. Their validators are the safety net
under the prompts: an answer naming a memory that is not among the candidates, an event that
is not in the conversation or a topic that is not configured is rejected and asked again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contextiq.memory.v1 import memory_pb2
from contextiq.sessions.v1 import session_pb2
from extraction_svc.llm import LlmClient, OutputInvalidError, Result, Usage
from extraction_svc.prompts import consolidation_messages, extraction_messages, turns_of

__all__ = ["ACTIONS", "MAX_FACT_CHARS", "consolidate", "extract"]

ACTIONS = ("CREATE", "UPDATE", "DELETE", "NOOP")
MAX_FACT_CHARS = 2000
MAX_FACTS = 100


def _extraction_schema(topic_ids: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "fact": {"type": "string"},
                        "topic": {"type": "string", "enum": topic_ids},
                        "confidence": {"type": "number"},
                        "source_event_ids": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["fact", "topic", "confidence", "source_event_ids"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["facts"],
        "additionalProperties": False,
    }


def _consolidation_schema(topic_ids: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "actions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "action": {"type": "string", "enum": list(ACTIONS)},
                        "memory_id": {"type": "string"},
                        "fact": {"type": "string"},
                        "topic": {"type": "string", "enum": [*topic_ids, ""]},
                        "confidence": {"type": "number"},
                        "reason": {"type": "string"},
                        "fact_indexes": {"type": "array", "items": {"type": "integer"}},
                    },
                    "required": [
                        "action",
                        "memory_id",
                        "fact",
                        "topic",
                        "confidence",
                        "reason",
                        "fact_indexes",
                    ],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["actions"],
        "additionalProperties": False,
    }


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OutputInvalidError(f"{where} must be a JSON object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise OutputInvalidError(f"{where} must be a JSON array")
    return value


def _confidence(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise OutputInvalidError(f"{where}.confidence must be a number from 0 to 1")
    return float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OutputInvalidError(f"{where} must be a non-empty string")
    if len(value) > MAX_FACT_CHARS:
        raise OutputInvalidError(f"{where} is longer than {MAX_FACT_CHARS} characters")
    return value.strip()


async def extract(
    llm: LlmClient,
    *,
    model: str,
    events: Sequence[session_pb2.Event],
    topics: Sequence[memory_pb2.MemoryTopic],
    examples: Sequence[memory_pb2.FewShotExample],
    scope: dict[str, str],
) -> Result[list[memory_pb2.ExtractedFact]]:
    """Extract the facts worth remembering from some events.

    Returns:
        The validated facts (each with topic, confidence and source event ids) and the usage.
        A conversation without readable content returns no facts and makes no model call.
    """
    turns = turns_of(events)
    if not turns:
        return Result(value=[], usage=Usage())
    topic_ids = [t.id for t in topics]
    event_ids = {t.event_id for t in turns}

    def validate(answer: Any) -> list[memory_pb2.ExtractedFact]:
        items = _list(_object(answer, "the answer").get("facts"), "facts")
        if len(items) > MAX_FACTS:
            raise OutputInvalidError(f"at most {MAX_FACTS} facts may be returned")
        facts = []
        for i, raw in enumerate(items):
            where = f"facts[{i}]"
            item = _object(raw, where)
            topic = item.get("topic")
            if topic not in topic_ids:
                raise OutputInvalidError(f"{where}.topic {topic!r} is not one of {topic_ids}")
            sources = _list(item.get("source_event_ids"), f"{where}.source_event_ids")
            unknown = [s for s in sources if s not in event_ids]
            if unknown or not sources:
                raise OutputInvalidError(
                    f"{where}.source_event_ids must name event_id values of the conversation "
                    f"(unknown: {unknown[:3]})"
                    if unknown
                    else f"{where}.source_event_ids must not be empty"
                )
            facts.append(
                memory_pb2.ExtractedFact(
                    fact=_text(item.get("fact"), f"{where}.fact"),
                    topic=str(topic),
                    confidence=_confidence(item.get("confidence"), where),
                    source_event_ids=[str(s) for s in dict.fromkeys(sources)],
                )
            )
        return facts

    return await llm.complete_json(
        model=model,
        messages=extraction_messages(turns=turns, topics=topics, examples=examples, scope=scope),
        schema_name="extracted_facts",
        schema=_extraction_schema(topic_ids),
        validate=validate,
    )


async def consolidate(
    llm: LlmClient,
    *,
    model: str,
    new_facts: Sequence[memory_pb2.ExtractedFact],
    existing: Sequence[memory_pb2.Memory],
    topics: Sequence[memory_pb2.MemoryTopic],
) -> Result[list[memory_pb2.ConsolidationAction]]:
    """Decide CREATE / UPDATE / DELETE / NOOP for new facts against existing memories.

    Returns:
        Validated actions that touch only the given candidates and account for every new
        fact, and the usage. Without candidates every fact is created without a model call.
    """
    if not new_facts:
        return Result(value=[], usage=Usage())
    if not existing:
        return Result(value=_create_all(new_facts), usage=Usage())
    topic_ids = [t.id for t in topics]
    candidates = {m.id for m in existing}

    def validate(answer: Any) -> list[memory_pb2.ConsolidationAction]:
        items = _list(_object(answer, "the answer").get("actions"), "actions")
        actions = []
        covered: set[int] = set()
        touched: dict[str, str] = {}
        for i, raw in enumerate(items):
            where = f"actions[{i}]"
            item = _object(raw, where)
            kind = item.get("action")
            if kind not in ACTIONS:
                raise OutputInvalidError(f"{where}.action must be one of {list(ACTIONS)}")
            memory_id = str(item.get("memory_id") or "")
            if kind == "CREATE" and memory_id:
                raise OutputInvalidError(f"{where}: CREATE must not name a memory_id")
            if kind != "CREATE":
                if memory_id not in candidates:
                    raise OutputInvalidError(
                        f"{where}.memory_id {memory_id!r} is not one of the existing memories; "
                        "use only the ids listed"
                    )
                if kind != "NOOP" and touched.get(memory_id, kind) != kind:
                    raise OutputInvalidError(
                        f"{where}: memory {memory_id} cannot be both {touched[memory_id]} "
                        f"and {kind}"
                    )
                if kind != "NOOP":
                    touched[memory_id] = kind
            indexes = _list(item.get("fact_indexes"), f"{where}.fact_indexes")
            if any(not isinstance(x, int) or not 0 <= x < len(new_facts) for x in indexes):
                raise OutputInvalidError(
                    f"{where}.fact_indexes must be indexes of the new facts (0 to "
                    f"{len(new_facts) - 1})"
                )
            covered.update(indexes)
            fact = topic = ""
            if kind in ("CREATE", "UPDATE"):
                fact = _text(item.get("fact"), f"{where}.fact")
                topic = str(item.get("topic") or "")
                if topic not in topic_ids:
                    raise OutputInvalidError(f"{where}.topic {topic!r} is not one of {topic_ids}")
            sources = [e for x in indexes for e in new_facts[x].source_event_ids]
            actions.append(
                memory_pb2.ConsolidationAction(
                    action=str(kind),
                    memory_id=memory_id,
                    fact=fact,
                    topic=topic,
                    confidence=_confidence(item.get("confidence", 1.0), where),
                    reason=str(item.get("reason") or "")[:1000],
                    fact_indexes=[int(x) for x in dict.fromkeys(indexes)],
                    source_event_ids=list(dict.fromkeys(sources)),
                )
            )
        missing = sorted(set(range(len(new_facts))) - covered)
        if missing:
            raise OutputInvalidError(f"new facts {missing} are not accounted for by any action")
        return actions

    return await llm.complete_json(
        model=model,
        messages=consolidation_messages(new_facts=new_facts, existing=existing, topics=topics),
        schema_name="consolidation_actions",
        schema=_consolidation_schema(topic_ids),
        validate=validate,
    )


def _create_all(
    new_facts: Sequence[memory_pb2.ExtractedFact],
) -> list[memory_pb2.ConsolidationAction]:
    # Exact duplicates among the new facts collapse into one CREATE listing both indexes.
    by_text: dict[str, memory_pb2.ConsolidationAction] = {}
    for index, fact in enumerate(new_facts):
        key = " ".join(fact.fact.lower().split())
        action = by_text.get(key)
        if action is None:
            by_text[key] = memory_pb2.ConsolidationAction(
                action="CREATE",
                fact=fact.fact,
                topic=fact.topic,
                confidence=fact.confidence,
                reason="no existing memory of the scope is similar",
                fact_indexes=[index],
                source_event_ids=list(fact.source_event_ids),
            )
        else:
            action.fact_indexes.append(index)
            action.source_event_ids.extend(
                e for e in fact.source_event_ids if e not in action.source_event_ids
            )
    return list(by_text.values())
