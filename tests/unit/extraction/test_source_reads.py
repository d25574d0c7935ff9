"""How a generation job reads a session: the watermark and the events, and their order.

The services are replaced by recording stand-ins here because the interleaving under test
(another job moving the watermark between this job's two reads) cannot be forced against real
servers; the end-to-end behaviour of the watermark is covered by tests/integration/extraction.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from contextiq.extraction.v1 import jobs_pb2
from contextiq.memory.v1 import generation_pb2, memory_job_service_pb2
from contextiq.sessions.v1 import session_pb2, session_service_pb2
from extraction_svc.generation import GenerateMemoriesHandler
from extraction_svc.runner import Delivery


class _Services:
    """GetGenerationWatermark and ListEvents answering from scripted states."""

    def __init__(self, watermark: str, event_pages: list[list[str]]) -> None:
        self.watermark = watermark
        self.event_pages = event_pages
        self.calls: list[tuple[str, str]] = []
        self.both_in_flight = False
        self._in_flight = 0

    async def _enter(self) -> None:
        self._in_flight += 1
        self.both_in_flight = self.both_in_flight or self._in_flight == 2
        await asyncio.sleep(0.01)
        self._in_flight -= 1

    async def GetGenerationWatermark(
        self, request: memory_job_service_pb2.GetGenerationWatermarkRequest, **_: Any
    ) -> memory_job_service_pb2.GenerationWatermark:
        self.calls.append(("watermark", request.session_id))
        await self._enter()
        return memory_job_service_pb2.GenerationWatermark(event_id=self.watermark)

    async def ListEvents(
        self, request: session_service_pb2.ListEventsRequest, **_: Any
    ) -> session_service_pb2.ListEventsResponse:
        self.calls.append(("events", request.after_event_id))
        await self._enter()
        ids = self.event_pages.pop(0) if len(self.event_pages) > 1 else self.event_pages[0]
        if request.after_event_id:
            ids = ids[ids.index(request.after_event_id) + 1 :]
        return session_service_pb2.ListEventsResponse(
            events=[session_pb2.Event(id=event_id) for event_id in ids]
        )


def _handler(services: _Services) -> GenerateMemoriesHandler:
    clients = SimpleNamespace(
        memory=services, sessions=services, timeout_s=5.0, metadata=lambda *_: ()
    )
    return GenerateMemoriesHandler(clients, llm=None, default_model=None)  # type: ignore[arg-type]


def _job(**config: Any) -> jobs_pb2.GenerateMemoriesJob:
    return jobs_pb2.GenerateMemoriesJob(
        operation_name="operations/x",
        tenant_id="t",
        request=generation_pb2.GenerateMemoriesRequest(
            source_type="session",
            source_reference="s1",
            config=generation_pb2.GenerationConfig(**config),
        ),
    )


_DELIVERY = Delivery(
    subject="jobs", attempt=1, max_deliver=5, headers={}, stream_sequence=1, published_at=None
)


async def _read(services: _Services, job: jobs_pb2.GenerateMemoriesJob) -> Any:
    handler = _handler(services)
    return await handler._source(job, _DELIVERY, lambda: handler._watermark(job, _DELIVERY))


async def test_whole_session_reads_watermark_and_events_at_once() -> None:
    services = _Services("e1", [["e1", "e2"]])
    source = await _read(services, _job())
    assert services.both_in_flight
    assert [event.id for event in source.events] == ["e1", "e2"]
    assert (source.expected_watermark, source.watermark) == ("e1", "e2")


async def test_watermark_past_the_events_read_makes_the_job_read_them_again() -> None:
    # Another job advanced the watermark to e3 after this job's events read returned e1, e2:
    # applying with watermark e2 would move it backwards. The job reads the events again.
    services = _Services("e3", [["e1", "e2"], ["e1", "e2", "e3"]])
    source = await _read(services, _job())
    assert [kind for kind, _ in services.calls].count("events") == 2
    assert [event.id for event in source.events] == ["e1", "e2", "e3"]
    assert (source.expected_watermark, source.watermark) == ("e3", "e3")


async def test_only_unprocessed_reads_after_the_watermark() -> None:
    services = _Services("e1", [["e1", "e2", "e3"]])
    source = await _read(services, _job(only_unprocessed=True))
    assert not services.both_in_flight
    assert services.calls == [("watermark", "s1"), ("events", "e1")]
    assert [event.id for event in source.events] == ["e2", "e3"]
    assert (source.expected_watermark, source.watermark) == ("e1", "e3")
