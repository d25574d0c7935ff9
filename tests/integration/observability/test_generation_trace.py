"""One memory generation is one trace: gateway → memory service → JetStream → worker →
sessions service → LLM → memory apply, with parent/child links across gRPC and NATS.

Run with ``-s`` to see the trace tree printed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ciq_runtime import telemetry
from ciq_runtime.embedded import EmbeddedNats
from gateway.app import create_app
from gateway.server import serve
from tests.auth_helpers import bearer_headers
from tests.integration.extraction.pipeline import Pipeline, response_of, running_pipeline
from tests.integration.observability.conftest import fresh_database
from tests.integration.observability.trace_tree import render_tree
from tests.llm_server import MODEL, Reply, ScriptedLLM

MEMORY_SERVICE = "contextiq.memory.v1.MemoryService"


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _model(body: dict[str, Any]) -> Reply:
    """Extraction: one fact per user turn; consolidation: create every new fact."""
    schema = body["response_format"]["json_schema"]["name"]
    user = body["messages"][1]["content"]
    if schema == "extracted_facts":
        turns = [
            json.loads(line)
            for line in _between(user, "<conversation>\n", "\n</conversation>").splitlines()
        ]
        facts = [
            {
                "fact": f"The user said: {turn['text']}",
                "topic": "KEY_CONVERSATION_DETAILS",
                "confidence": 0.9,
                "source_event_ids": [turn["event_id"]],
            }
            for turn in turns
            if turn["author"] == "user"
        ]
        return Reply.json({"facts": facts}, prompt_tokens=210, completion_tokens=40)
    facts = json.loads(_between(user, "<new_facts>\n", "\n</new_facts>"))
    return Reply.json(
        {
            "actions": [
                {
                    "action": "CREATE",
                    "memory_id": "",
                    "fact": f["fact"],
                    "topic": f["topic"],
                    "confidence": 0.9,
                    "reason": "new",
                    "fact_indexes": [f["index"]],
                }
                for f in facts
            ]
        },
        prompt_tokens=150,
        completion_tokens=30,
    )


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = telemetry.install_test_exporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture(scope="module")
async def pipeline(
    pg_url: str, pg_dsn: str, service_tmp_path: Path, spans: InMemorySpanExporter
) -> AsyncIterator[Pipeline]:
    nats = EmbeddedNats(store_dir=service_tmp_path / f"nats-trace-{uuid.uuid4().hex[:8]}")
    await nats.start()
    llm = await ScriptedLLM(fallback=_model).start()
    try:
        async with running_pipeline(
            await fresh_database(pg_url, pg_dsn), nats.url, llm, llm_timeout_s=15.0
        ) as running:
            yield running
    finally:
        await llm.stop()
        await nats.stop()


async def _wait_for_spans(
    exporter: InMemorySpanExporter,
    trace_id: int,
    done: Callable[[list[ReadableSpan]], bool],
    *,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> list[ReadableSpan]:
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if done(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError("the trace did not complete; spans so far:\n" + render_tree(found))
        await asyncio.sleep(0.05)


def _one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    matches = [s for s in spans if s.name == name and (kind is None or s.kind is kind)]
    assert len(matches) == 1, f"{len(matches)} spans named {name!r} ({kind})"
    return matches[0]


def _parent(spans: list[ReadableSpan], span: ReadableSpan) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    by_id = {s.context.span_id: s for s in spans}
    assert span.parent.span_id in by_id, f"the parent of {span.name} is not in the trace"
    return by_id[span.parent.span_id]


def _ancestors(spans: list[ReadableSpan], span: ReadableSpan) -> list[str]:
    by_id = {s.context.span_id: s for s in spans}
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_one_generation_is_one_trace(pipeline: Pipeline, spans: InMemorySpanExporter) -> None:
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    session = await pipeline.create_session(tenant, user_id="dana")
    await pipeline.append(tenant, session.id, "user", "I live in Lisbon.")
    await pipeline.append(tenant, session.id, "agent", "Nice city!")

    app = create_app(routes_from=[MEMORY_SERVICE], upstreams={MEMORY_SERVICE: pipeline.memory_addr})
    gateway = await serve(app, host="127.0.0.1", port=0)
    try:
        spans.clear()
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            reply = await client.post(
                "/api/v1/memories/generate",
                json={
                    "source_type": "session",
                    "source_reference": session.id,
                    "scope": {"user_id": "dana"},
                },
                headers=bearer_headers(tenant),
                timeout=30,
            )
    finally:
        await gateway.stop()
    assert reply.status_code == 200, reply.text
    trace_id = int(reply.headers["x-trace-id"], 16)
    operation = await pipeline.wait_done(tenant, reply.json()["name"])
    assert response_of(operation).memories_created == 1

    apply_name = "contextiq.memory.v1.MemoryJobService/ApplyGeneration"
    trace = await _wait_for_spans(
        spans,
        trace_id,
        lambda found: (
            any(s.name == apply_name and s.kind is SpanKind.SERVER for s in found)
            and any(s.kind is SpanKind.CONSUMER and s.end_time for s in found)
        ),
    )
    tree = render_tree(trace)
    print(f"\ntrace {trace_id:032x}\n{tree}")

    # One trace, one root: the gateway's request span.
    roots = [s for s in trace if s.parent is None]
    assert [r.name for r in roots] == ["POST /api/v1/memories/generate"], tree
    gateway_span = roots[0]
    assert gateway_span.kind is SpanKind.SERVER

    # gateway → memory service (GenerateMemories) …
    generate = _one(trace, "contextiq.memory.v1.MemoryService/GenerateMemories", SpanKind.SERVER)
    assert _parent(trace, generate) is gateway_span
    assert (generate.attributes or {}).get("contextiq.tenant_id") == tenant

    # … → JetStream publish (the outbox relay, carrying the request's trace) …
    (publish,) = [s for s in trace if s.kind is SpanKind.PRODUCER]
    assert publish.name.endswith(" publish")
    assert generate.name in _ancestors(trace, publish)

    # … → worker consume, a child of the publish …
    (consume,) = [s for s in trace if s.kind is SpanKind.CONSUMER]
    assert _parent(trace, consume) is publish
    assert (consume.attributes or {}).get("contextiq.tenant_id") == tenant
    assert (consume.attributes or {}).get("contextiq.job.outcome") == "done"

    # … → sessions service: the worker reads the session's events (the memory service also
    # checked the session when it accepted the request); every call goes through a CLIENT span.
    session_reads = [
        s
        for s in trace
        if s.kind is SpanKind.SERVER and s.name.startswith("contextiq.sessions.v1.SessionService/")
    ]
    for read in session_reads:
        assert _parent(trace, read).kind is SpanKind.CLIENT
    by_worker = [s for s in session_reads if consume.name in _ancestors(trace, s)]
    assert by_worker, tree
    assert any(generate.name in _ancestors(trace, s) for s in session_reads), tree

    # … → the LLM calls, with model and token attributes …
    chats = [s for s in trace if s.name == f"chat {MODEL}"]
    assert {(s.attributes or {}).get("contextiq.llm.operation") for s in chats} >= {
        "extracted_facts"
    }
    for chat in chats:
        attributes = chat.attributes or {}
        assert chat.kind is SpanKind.CLIENT
        assert attributes["gen_ai.request.model"] == MODEL
        # The scripted model's usage: extraction 210/40, consolidation 150/30.
        tokens = (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"])
        assert tokens in {(210, 40), (150, 30)}
        assert attributes["contextiq.tenant_id"] == tenant
        assert consume.name in _ancestors(trace, chat)

    # … → memory apply (MemoryJobService.ApplyGeneration), with its database statements.
    apply = _one(trace, apply_name, SpanKind.SERVER)
    assert _parent(trace, apply).kind is SpanKind.CLIENT
    assert consume.name in _ancestors(trace, apply)
    statements = [s for s in trace if s.instrumentation_scope.name == "ciq_runtime.db"]  # type: ignore[union-attr]
    assert any(_parent(trace, s) is apply for s in statements), tree
    assert any(_parent(trace, s) is generate for s in statements), tree
