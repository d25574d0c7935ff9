"""gRPC servicer of ``contextiq.extraction.v1.ExtractionService``: the two model steps.

Both RPCs go through LiteLLM with JSON-schema output validated strictly (``steps.py``). The
model is the request's, else ``CONTEXTIQ_LLM_MODEL``; with neither, FAILED_PRECONDITION says
how to configure one.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from ciq_runtime.errors import FailedPrecondition, InvalidArgument
from ciq_runtime.principal import current_principal
from contextiq.extraction.v1 import extraction_service_pb2 as pb
from contextiq.extraction.v1 import extraction_service_pb2_grpc
from contextiq.memory.v1 import memory_pb2
from extraction_svc.llm import LlmClient
from extraction_svc.steps import MAX_FACT_CHARS, consolidate, extract
from extraction_svc.topics import effective_topics

__all__ = ["NO_MODEL_MESSAGE", "ExtractionServicer", "resolve_model", "validate_topics"]

NO_MODEL_MESSAGE = (
    "no LLM is configured: set CONTEXTIQ_LLM_MODEL (e.g. openai/gpt-4o-mini with "
    "OPENAI_API_KEY, anthropic/claude-3-5-haiku-latest with ANTHROPIC_API_KEY, "
    "gemini/gemini-2.0-flash with GEMINI_API_KEY, or ollama/llama3.1 with "
    "CONTEXTIQ_LLM_API_BASE=http://localhost:11434), the memory bank's extraction_model, or "
    "the request's model"
)


def resolve_model(*candidates: str | None) -> str:
    """The first configured model name.

    Raises:
        FailedPrecondition: When none is configured.
    """
    for candidate in candidates:
        if candidate:
            return candidate
    raise FailedPrecondition(NO_MODEL_MESSAGE, reason="LLM_NOT_CONFIGURED")


def validate_topics(
    topics: Sequence[memory_pb2.MemoryTopic], *, field: str
) -> list[memory_pb2.MemoryTopic]:
    """The effective topics, after checking ids are present and unique."""
    seen: set[str] = set()
    for index, topic in enumerate(topics):
        if not topic.id.strip():
            raise InvalidArgument("every topic needs an id", field=f"{field}[{index}].id")
        if topic.id in seen:
            raise InvalidArgument(f"topic {topic.id!r} is given twice", field=f"{field}[{index}]")
        seen.add(topic.id)
    return effective_topics(topics)


class ExtractionServicer(extraction_service_pb2_grpc.ExtractionServiceServicer):
    """Extract and Consolidate, callable directly (MEMORY_WRITE)."""

    def __init__(self, llm: LlmClient, *, default_model: str | None) -> None:
        """Create the servicer.

        Args:
            llm: The LiteLLM client.
            default_model: ``CONTEXTIQ_LLM_MODEL``.
        """
        self._llm = llm
        self._default_model = default_model

    async def Extract(
        self, request: pb.ExtractRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtractResponse:
        """Extract facts from events."""
        current_principal()
        if not request.events:
            raise InvalidArgument("events must hold at least one event", field="events")
        topics = validate_topics(request.topics, field="topics")
        model = resolve_model(request.model, self._default_model)
        result = await extract(
            self._llm,
            model=model,
            events=request.events,
            topics=topics,
            examples=request.few_shot_examples,
            scope=dict(request.scope),
        )
        return pb.ExtractResponse(facts=result.value, usage=result.usage.to_proto(), model=model)

    async def Consolidate(
        self, request: pb.ConsolidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConsolidateResponse:
        """Decide actions for new facts against existing memories."""
        current_principal()
        if not request.new_facts:
            raise InvalidArgument("new_facts must hold at least one fact", field="new_facts")
        for index, fact in enumerate(request.new_facts):
            if not fact.fact.strip() or len(fact.fact) > MAX_FACT_CHARS:
                raise InvalidArgument(
                    f"a fact must be 1 to {MAX_FACT_CHARS} characters",
                    field=f"new_facts[{index}].fact",
                )
        for index, memory in enumerate(request.existing_memories):
            if not memory.id:
                raise InvalidArgument(
                    "existing memories need their id", field=f"existing_memories[{index}].id"
                )
        topics = validate_topics(request.topics, field="topics")
        model = resolve_model(request.model, self._default_model)
        result = await consolidate(
            self._llm,
            model=model,
            new_facts=request.new_facts,
            existing=request.existing_memories,
            topics=topics,
        )
        return pb.ConsolidateResponse(
            actions=result.value, usage=result.usage.to_proto(), model=model
        )
