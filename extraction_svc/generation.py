"""The memory generation job: events → facts → consolidation → one idempotent apply.

For each :class:`~contextiq.extraction.v1.jobs_pb2.GenerateMemoriesJob` (DESIGN.md §5):

1. Start: ``StartGenerationJob`` reports ``extracting`` (``consolidating`` for inline facts)
   and answers with the operation, the bank's configuration and the session's generation
   watermark, in one call. When the operation is already done (a redelivery after success, a
   cancellation) the job stops there.
2. Read the source: a session's events from SessionService (paginated; only those after the
   generation watermark with ``only_unprocessed``; ``start_time`` / ``end_time`` as a filter),
   inline events, or inline facts.
3. Extract facts with the bank's topics (narrowed by ``config.topics``) and few-shot examples.
4. Fetch the scope's memories similar to each fact (the only candidates an action may touch)
   and consolidate: through the model, or by similarity alone for inline facts without a model
   (:mod:`extraction_svc.similarity`), or not at all (``disable_consolidation``).
5. Dry run: report ``done`` with the planned actions. Otherwise ``ApplyGeneration`` keyed by
   the operation, advancing the session's watermark with compare-and-set; when another
   generation moved the watermark meanwhile (ABORTED) the job starts again from the new one.

Transient failures (a service restarting) become :class:`RetryJob` (redelivery with backoff;
the apply is idempotent, so a retry after a lost answer changes nothing twice). Model failures
after their bounded retries, invalid output and bad configuration end the operation with a
clear ``google.rpc.Status`` (:class:`FailJob`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.rpc import code_pb2, status_pb2

from ciq_runtime.errors import ContextIQError, FailedPrecondition, reason_of, to_status
from contextiq.extraction.v1 import jobs_pb2
from contextiq.memory.v1 import (
    generation_pb2,
    memory_job_service_pb2,
    memory_pb2,
)
from contextiq.sessions.v1 import session_pb2, session_service_pb2
from extraction_svc import jobs
from extraction_svc.clients import ServiceClients, classify
from extraction_svc.dead_letters import REPLAY_HEADER
from extraction_svc.llm import LlmClient, Usage
from extraction_svc.runner import Delivery, FailJob, InvalidJob, JobSpec, RetryJob
from extraction_svc.servicer import NO_MODEL_MESSAGE
from extraction_svc.similarity import consolidate_by_similarity
from extraction_svc.steps import consolidate, extract
from extraction_svc.topics import effective_topics

__all__ = ["GenerateMemoriesHandler", "generate_memories_spec"]

log = logging.getLogger(__name__)

SOURCES = ("session", "events", "facts")
#: Re-runs after the watermark moved under the job, before it is retried as a whole.
MAX_WATERMARK_RERUNS = 3
#: Candidates per new fact.
CANDIDATES_PER_FACT = 5
#: Events per ListEvents page.
EVENTS_PAGE = 1000
#: Largest session the worker reads in one job.
MAX_EVENTS = 20_000


class _OperationOver(Exception):  # noqa: N818 - control flow inside the handler
    """The operation was finished elsewhere (cancelled, done): stop quietly."""


class _WatermarkMoved(Exception):  # noqa: N818 - control flow inside the handler
    """ApplyGeneration refused the compare-and-set of the watermark."""


@dataclass
class _CountedLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class _Source:
    events: list[session_pb2.Event]
    expected_watermark: str
    watermark: str
    facts: list[memory_pb2.ExtractedFact]


class GenerateMemoriesHandler:
    """Runs generation jobs against the sessions and memory services."""

    def __init__(
        self,
        clients: ServiceClients,
        llm: LlmClient,
        *,
        default_model: str | None,
    ) -> None:
        """Create the handler.

        Args:
            clients: Stubs of the sessions and memory services.
            llm: The LiteLLM client.
            default_model: ``CONTEXTIQ_LLM_MODEL``.
        """
        self._clients = clients
        self._llm = llm
        self._default_model = default_model
        self._llm_loaded = False
        self._session_locks: dict[str, _CountedLock] = {}

    # ------------------------------------------------------------------ runner interface

    async def ready(self) -> None:
        """Wait until the memory service answers (the embedded stack starts the worker before
        its own gRPC server serves)."""
        await self._clients.wait_ready()

    @staticmethod
    def validate(job: jobs_pb2.GenerateMemoriesJob) -> None:
        """Reject jobs that can never run (poison)."""
        if not job.operation_name.startswith("operations/"):
            raise InvalidJob("the job has no operation_name")
        if not job.tenant_id:
            raise InvalidJob("the job has no tenant_id")
        request = job.request
        if request.source_type not in SOURCES:
            raise InvalidJob(f"unknown source_type {request.source_type!r}")
        if request.source_type == "session" and not request.source_reference:
            raise InvalidJob("a session job has no source_reference")

    @staticmethod
    def describe(job: jobs_pb2.GenerateMemoriesJob) -> dict[str, str]:
        """Identity of a job for logs and dead letters."""
        return {
            k: v
            for k, v in {
                "operation_name": job.operation_name,
                "tenant_id": job.tenant_id,
                "session_id": job.request.source_reference
                if job.request.source_type == "session"
                else "",
                "bank_id": job.request.bank_id,
            }.items()
            if v
        }

    async def fail(
        self, job: jobs_pb2.GenerateMemoriesJob, delivery: Delivery, status: status_pb2.Status
    ) -> bool:
        """End the operation with ``status``; True once recorded."""
        if not job.operation_name or not job.tenant_id:
            return False
        await self._report(job, delivery, "failed", error=status)
        return True

    async def handle(self, job: jobs_pb2.GenerateMemoriesJob, delivery: Delivery) -> None:
        """Run one delivery of a job (see the module docstring)."""
        try:
            await self._run(job, delivery)
        except _OperationOver:
            log.log(
                logging.WARNING if REPLAY_HEADER in delivery.headers else logging.INFO,
                "operation %s is already finished (done, failed or cancelled); job skipped",
                job.operation_name,
            )
        except grpc.aio.AioRpcError as exc:
            raise classify(exc, service="memory or sessions service") from None
        except ContextIQError as exc:
            # Model errors after llm.py's bounded retries, refused requests, no model.
            raise FailJob(to_status(exc)) from None

    # ------------------------------------------------------------------------- the job

    async def _run(self, job: jobs_pb2.GenerateMemoriesJob, delivery: Delivery) -> None:
        request = job.request
        if request.source_type != "session":
            await self._run_once(job, delivery)
            return
        # Generations of one session and scope take turns in this worker: the second then
        # starts from the watermark the first advanced, instead of extracting the same events
        # and losing the compare-and-set (which still guards against other workers).
        key = "\x1f".join(
            [job.tenant_id, request.bank_id, request.source_reference]
            + [f"{k}={v}" for k, v in sorted(request.scope.items())]
        )
        lock = self._session_locks.setdefault(key, _CountedLock())
        lock.users += 1
        try:
            async with lock.lock:
                await self._run_once(job, delivery)
        finally:
            lock.users -= 1
            if not lock.users:
                self._session_locks.pop(key, None)

    async def _run_once(self, job: jobs_pb2.GenerateMemoriesJob, delivery: Delivery) -> None:
        request = job.request
        # The first report tells whether the operation already ended, and brings the bank and
        # the session's watermark; the events are read meanwhile (a read changes nothing, and
        # is discarded if the operation ended).
        started = asyncio.ensure_future(self._start(job, delivery))

        async def watermark() -> str:
            event_id: str = (await started).watermark.event_id
            return event_id

        _, source = await _together(started, self._source(job, delivery, watermark))
        bank = started.result().bank
        model = request.config.model or bank.extraction_model or self._default_model or None
        for rerun in range(MAX_WATERMARK_RERUNS + 1):
            try:
                await self._generate(job, delivery, bank, model, source)
                return
            except _WatermarkMoved:
                log.info(
                    "watermark of session %s moved during %s; extracting again (%d)",
                    request.source_reference,
                    job.operation_name,
                    rerun + 1,
                )
                source = await self._source(job, delivery, lambda: self._watermark(job, delivery))
        raise RetryJob(
            status_pb2.Status(
                code=code_pb2.ABORTED,
                message="the session's generation watermark kept moving during the job",
            )
        )

    async def _generate(
        self,
        job: jobs_pb2.GenerateMemoriesJob,
        delivery: Delivery,
        bank: memory_pb2.MemoryBank,
        model: str | None,
        source: _Source,
    ) -> None:
        request = job.request
        config = request.config
        usage = Usage()
        topics = _topics(bank, config.topics)
        reported: Awaitable[object] | None = None
        if request.source_type == "facts":
            facts = source.facts
        else:
            if model is None:
                raise FailedPrecondition(NO_MODEL_MESSAGE, reason="LLM_NOT_CONFIGURED")
            await self._warm_up()
            extracted = await extract(
                self._llm,
                model=model,
                events=source.events,
                topics=topics,
                examples=bank.few_shot_examples,
                scope=dict(request.scope),
            )
            usage.add(extracted.usage)
            facts = extracted.value
            reported = self._report(
                job, delivery, "consolidating", extracted_count=len(facts), usage=usage
            )

        candidates: dict[str, memory_pb2.Memory] = {}
        similar: list[memory_job_service_pb2.SimilarMemories] = []
        consolidation_on = not config.disable_consolidation and (
            not bank.HasField("enable_consolidation") or bank.enable_consolidation
        )
        if facts and consolidation_on:
            found = await self._clients.memory.FindSimilarMemories(
                memory_job_service_pb2.FindSimilarMemoriesRequest(
                    tenant_id=job.tenant_id,
                    bank_id=request.bank_id,
                    scope=request.scope,
                    facts=facts,
                    top_k=CANDIDATES_PER_FACT,
                ),
                metadata=self._md(job, delivery),
                timeout=self._clients.timeout_s,
            )
            similar = list(found.results)
            for result in similar:
                for memory in result.memories:
                    candidates.setdefault(memory.id, memory)
        actions: list[memory_pb2.ConsolidationAction]
        if facts and consolidation_on and candidates and model is not None:
            await self._warm_up()
            # The "consolidating" report travels alongside the model call, off the job's path
            # (a cancellation it reveals stops the job before the apply).
            *_, consolidated = await _together(
                *([reported] if reported is not None else []),
                consolidate(
                    self._llm,
                    model=model,
                    new_facts=facts,
                    existing=list(candidates.values()),
                    topics=_with_fact_topics(topics, facts),
                ),
            )
            usage.add(consolidated.usage)
            actions = consolidated.value
        else:
            if reported is not None:
                await reported
            if not facts:
                actions = []
            elif not consolidation_on or not candidates:
                # consolidate() creates every fact (duplicates merged) without a model call.
                actions = (
                    await consolidate(
                        self._llm, model="", new_facts=facts, existing=[], topics=topics
                    )
                ).value
            else:
                actions = consolidate_by_similarity(facts, similar)
        _check_within_candidates(actions, candidates, dict(request.scope), len(facts))

        if config.dry_run:
            await self._report(
                job,
                delivery,
                "done",
                extracted_count=len(facts),
                usage=usage,
                response=generation_pb2.GenerateMemoriesResponse(
                    extracted_facts=facts, planned_actions=actions, usage=usage.to_proto()
                ),
            )
            return
        # "applying" travels alongside the apply instead of before it (one round trip less
        # per job): when the apply commits first the service ignores the late report.
        applying = asyncio.ensure_future(
            self._report(job, delivery, "applying", extracted_count=len(facts), usage=usage)
        )
        apply = memory_job_service_pb2.ApplyGenerationRequest(
            operation_name=job.operation_name,
            tenant_id=job.tenant_id,
            bank_id=request.bank_id,
            scope=request.scope,
            actions=actions,
            extracted_facts=facts,
            source_session_id=request.source_reference if request.source_type == "session" else "",
            config=config,
            usage=usage.to_proto(),
            watermark_event_id=source.watermark,
            expected_watermark_event_id=source.expected_watermark,
        )
        try:
            await self._clients.memory.ApplyGeneration(
                apply, metadata=self._md(job, delivery), timeout=self._clients.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            answer = await _failure_of(applying)
            if isinstance(answer, _OperationOver) or reason_of(exc) in _OVER_REASONS:
                raise _OperationOver from None  # cancelled or finished meanwhile
            if exc.code() == grpc.StatusCode.ABORTED and source.watermark:
                raise _WatermarkMoved from None
            raise
        # Applied: the operation is done, so whatever the late report says changes nothing.
        late = await _failure_of(applying)
        if late is not None and not isinstance(late, _OperationOver):
            log.debug("the 'applying' report of %s failed: %s", job.operation_name, late)

    async def _start(
        self, job: jobs_pb2.GenerateMemoriesJob, delivery: Delivery
    ) -> memory_job_service_pb2.StartGenerationJobResponse:
        """The first report of the delivery, with the bank and the session's watermark."""
        started: memory_job_service_pb2.StartGenerationJobResponse = (
            await self._clients.memory.StartGenerationJob(
                memory_job_service_pb2.StartGenerationJobRequest(
                    operation_name=job.operation_name,
                    tenant_id=job.tenant_id,
                    state="consolidating" if job.request.source_type == "facts" else "extracting",
                    attempt=delivery.attempt,
                ),
                metadata=self._md(job, delivery),
                timeout=self._clients.timeout_s,
            )
        )
        if started.operation.done:
            # Finished already (a redelivery after success) or cancelled: stop before
            # doing anything.
            raise _OperationOver
        return started

    async def _source(
        self,
        job: jobs_pb2.GenerateMemoriesJob,
        delivery: Delivery,
        watermark: Callable[[], Awaitable[str]],
    ) -> _Source:
        """The job's input; ``watermark`` reads the session's generation watermark."""
        request = job.request
        if request.source_type == "facts":
            return _Source(
                events=[], expected_watermark="", watermark="", facts=list(request.facts)
            )
        if request.source_type == "events":
            return _Source(
                events=list(request.events), expected_watermark="", watermark="", facts=[]
            )
        ranged = request.HasField("start_time") or request.HasField("end_time")
        only_new = request.config.only_unprocessed
        expected = ""
        if only_new:
            # The events to read start after the watermark: one read after the other.
            expected = await watermark()
            events = await self._events(job, delivery, after_event_id=expected, request=request)
        elif not ranged:
            # The whole session: both reads at once. The watermark may only move forward, so
            # the events must reach it; if another job moved it past the events read (they were
            # read first), read them again.
            expected, events = await _together(
                watermark(),
                self._events(job, delivery, after_event_id="", request=request),
            )
            if expected and all(event.id != expected for event in events):
                events = await self._events(job, delivery, after_event_id="", request=request)
        else:
            events = await self._events(job, delivery, after_event_id="", request=request)
        # The watermark only moves forward: past every event when all of them (or all the new
        # ones) were read; a time range of old events leaves it alone.
        advance = bool(events) and (only_new or not ranged)
        return _Source(
            events=events,
            expected_watermark=expected,
            watermark=events[-1].id if advance else "",
            facts=[],
        )

    async def _watermark(self, job: jobs_pb2.GenerateMemoriesJob, delivery: Delivery) -> str:
        request = job.request
        mark = await self._clients.memory.GetGenerationWatermark(
            memory_job_service_pb2.GetGenerationWatermarkRequest(
                tenant_id=job.tenant_id,
                bank_id=request.bank_id,
                session_id=request.source_reference,
                scope=request.scope,
            ),
            metadata=self._md(job, delivery),
            timeout=self._clients.timeout_s,
        )
        event_id: str = mark.event_id
        return event_id

    async def _events(
        self,
        job: jobs_pb2.GenerateMemoriesJob,
        delivery: Delivery,
        *,
        after_event_id: str,
        request: generation_pb2.GenerateMemoriesRequest,
    ) -> list[session_pb2.Event]:
        clauses = []
        if request.HasField("start_time"):
            clauses.append(f'timestamp >= "{request.start_time.ToJsonString()}"')
        if request.HasField("end_time"):
            clauses.append(f'timestamp < "{request.end_time.ToJsonString()}"')
        events: list[session_pb2.Event] = []
        token = ""
        while True:
            page = await self._clients.sessions.ListEvents(
                session_service_pb2.ListEventsRequest(
                    session_id=request.source_reference,
                    page_size=EVENTS_PAGE,
                    page_token=token,
                    filter=" AND ".join(clauses),
                    after_event_id=after_event_id,
                ),
                metadata=self._md(job, delivery),
                timeout=self._clients.timeout_s,
            )
            events.extend(page.events)
            token = page.next_page_token
            if not token:
                return events
            if len(events) >= MAX_EVENTS:
                raise FailJob(
                    status_pb2.Status(
                        code=code_pb2.FAILED_PRECONDITION,
                        message=f"the session has more than {MAX_EVENTS} events to process: "
                        "generate from time ranges (start_time / end_time) instead",
                    )
                )

    async def _report(
        self,
        job: jobs_pb2.GenerateMemoriesJob,
        delivery: Delivery,
        state: str,
        *,
        extracted_count: int = 0,
        usage: Usage | None = None,
        error: status_pb2.Status | None = None,
        response: generation_pb2.GenerateMemoriesResponse | None = None,
    ) -> operations_pb2.Operation:
        request = memory_job_service_pb2.ReportOperationProgressRequest(
            operation_name=job.operation_name,
            tenant_id=job.tenant_id,
            state=state,
            extracted_count=extracted_count,
            attempt=delivery.attempt,
        )
        if usage is not None:
            request.usage.CopyFrom(usage.to_proto())
        if error is not None:
            request.error.CopyFrom(error)
        if response is not None:
            request.response.CopyFrom(response)
        operation: operations_pb2.Operation = await self._clients.memory.ReportOperationProgress(
            request, metadata=self._md(job, delivery), timeout=self._clients.timeout_s
        )
        if operation.done and state not in ("done", "failed"):
            # Finished already (a redelivery after success) or cancelled while this job ran:
            # stop before doing more.
            raise _OperationOver
        return operation

    async def _warm_up(self) -> None:
        # Importing LiteLLM takes seconds: off the event loop, or heartbeats would stall. Once
        # loaded, no thread hop per job.
        if not self._llm_loaded:
            await asyncio.to_thread(self._llm.warm_up)
            self._llm_loaded = True

    def _md(
        self, job: jobs_pb2.GenerateMemoriesJob, delivery: Delivery
    ) -> tuple[tuple[str, str], ...]:
        return self._clients.metadata(job.tenant_id, delivery.headers)


#: ApplyGeneration's ErrorInfo reasons for an operation that ended before the apply.
_OVER_REASONS = frozenset({"OPERATION_CANCELLED", "OPERATION_FINISHED"})


async def _failure_of(call: Awaitable[Any]) -> Exception | None:
    """Await ``call``; its exception (returned, not raised), or None when it succeeded."""
    try:
        await call
    except Exception as exc:  # noqa: BLE001 - the caller decides what a failure means
        return exc
    return None


async def _together(*calls: Awaitable[Any]) -> list[Any]:
    """Await calls concurrently; a finished operation wins over any other failure.

    Every call is awaited to its end (none is left running). When one says the operation is
    over, that is what the job learns; otherwise the first failure is raised.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        if isinstance(failure, _OperationOver):
            raise failure
    if failures:
        raise failures[0]
    return list(results)


def _topics(bank: memory_pb2.MemoryBank, wanted: Sequence[str]) -> list[memory_pb2.MemoryTopic]:
    topics = effective_topics(bank.topics)
    if not wanted:
        return topics
    allowed = set(wanted)
    narrowed = [t for t in topics if t.id in allowed]
    if not narrowed:
        raise FailJob(
            status_pb2.Status(
                code=code_pb2.INVALID_ARGUMENT,
                message=f"none of config.topics {sorted(allowed)} is a topic of the bank",
            )
        )
    return narrowed


def _with_fact_topics(
    topics: list[memory_pb2.MemoryTopic], facts: Sequence[memory_pb2.ExtractedFact]
) -> list[memory_pb2.MemoryTopic]:
    # Inline facts may carry a topic the bank does not list; consolidation may keep it.
    known = {t.id for t in topics}
    extra = [
        memory_pb2.MemoryTopic(id=f.topic)
        for f in facts
        if f.topic and f.topic not in known and not known.add(f.topic)  # type: ignore[func-returns-value]
    ]
    return [*topics, *extra]


def _check_within_candidates(
    actions: Sequence[memory_pb2.ConsolidationAction],
    candidates: dict[str, memory_pb2.Memory],
    scope: dict[str, str],
    fact_count: int,
) -> None:
    """The last line of defence: every action that names a memory names a candidate of the
    job's scope (the steps' validators already enforce this against the model's answer)."""
    for index, action in enumerate(actions):
        if action.action == "CREATE":
            if action.memory_id:
                raise _invalid(f"actions[{index}]: CREATE names memory {action.memory_id}")
        else:
            memory = candidates.get(action.memory_id)
            if memory is None:
                raise _invalid(f"actions[{index}]: memory {action.memory_id!r} is not a candidate")
            if dict(memory.scope) != scope:
                raise _invalid(f"actions[{index}]: memory {action.memory_id} is of another scope")
        if any(not 0 <= i < fact_count for i in action.fact_indexes):
            raise _invalid(f"actions[{index}]: fact_indexes out of range")


def _invalid(message: str) -> FailJob:
    return FailJob(
        status_pb2.Status(
            code=code_pb2.INTERNAL, message=f"consolidation produced an invalid plan: {message}"
        )
    )


def generate_memories_spec(
    handler: GenerateMemoriesHandler,
) -> JobSpec[jobs_pb2.GenerateMemoriesJob]:
    """The job type of memory generation, for :class:`~extraction_svc.runner.JobRunner`."""
    return JobSpec(
        name="memory-generate",
        subject=jobs.GENERATE_MEMORIES_SUBJECT,
        message_type=jobs_pb2.GenerateMemoriesJob,
        handle=handler.handle,
        fail=handler.fail,
        validate=handler.validate,
        ready=handler.ready,
        describe=handler.describe,
    )
