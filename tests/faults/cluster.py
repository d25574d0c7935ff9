"""The distributed shape for fault tests: each service its own process, killable.

``python -m sessions_svc``, ``python -m memory_svc`` and ``python -m extraction_svc`` run as
child processes on fixed ports with real JWT auth between them, over a database of their own
in the test cluster and a NATS of their own (restartable). The LLM is the scripted server in
the test process: an "echo" model that turns each user turn into a fact and creates every new
fact, answering after a configurable delay.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ciq_runtime.embedded import EmbeddedNats
from contextiq.memory.v1 import generation_pb2, memory_service_pb2, memory_service_pb2_grpc
from contextiq.sessions.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc
from tests.auth_helpers import TEST_JWT_SECRET, bearer
from tests.helpers import free_port
from tests.llm_server import MODEL, Reply, ScriptedLLM

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("sessions", "memory", "extraction")


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


@dataclass
class EchoModel:
    """Extraction: one fact per user turn. Consolidation: CREATE every new fact."""

    delay_s: float = 0.0
    calls: int = 0

    def __call__(self, body: dict[str, Any]) -> Reply:
        self.calls += 1
        schema = body.get("response_format", {}).get("json_schema", {}).get("name", "")
        user = body["messages"][1]["content"]
        if schema == "extracted_facts":
            lines = _between(user, "<conversation>\n", "\n</conversation>").splitlines()
            turns = [json.loads(line) for line in lines]
            facts = [
                {
                    "fact": f"The user said: {t['text']}",
                    "topic": "KEY_CONVERSATION_DETAILS",
                    "confidence": 0.9,
                    "source_event_ids": [t["event_id"]],
                }
                for t in turns
                if t["author"] == "user"
            ]
            return Reply.json({"facts": facts}, delay_s=self.delay_s)
        facts = json.loads(_between(user, "<new_facts>\n", "\n</new_facts>"))
        actions = [
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
        return Reply.json({"actions": actions}, delay_s=self.delay_s)


@dataclass
class Cluster:
    """Three service processes, their NATS, their database and the scripted LLM."""

    tmp: Path
    db_url: str
    db_dsn: str
    nats: EmbeddedNats
    llm: ScriptedLLM
    model: EchoModel
    worker_env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=lambda: {s: free_port() for s in SERVICES})
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def env(self, service: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CONTEXTIQ_")}
        for name in ("QDRANT_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "DATABASE_URL", "NATS_URL"):
            base.pop(name, None)
        env = {
            **base,
            "DATABASE_URL": self.db_url,
            "NATS_URL": self.nats.url,
            "CONTEXTIQ_JWT_SECRET": TEST_JWT_SECRET,
            "CONTEXTIQ_LLM_MODEL": MODEL,
            "CONTEXTIQ_LLM_API_BASE": self.llm.api_base,
            "CONTEXTIQ_LLM_API_KEY": "test-key",
            "CONTEXTIQ_LLM_TIMEOUT_SECONDS": "20",
            "CONTEXTIQ_LOG_LEVEL": "WARNING",
            "CONTEXTIQ_LOG_FORMAT": "text",
            "CONTEXTIQ_RATE_LIMIT_PER_MINUTE": "0",
            "CONTEXTIQ_TENANT_RATE_LIMIT_PER_MINUTE": "0",
            "CONTEXTIQ_SHUTDOWN_GRACE_SECONDS": "2",
            "CONTEXTIQ_SESSIONS_ADDR": f"127.0.0.1:{self.ports['sessions']}",
            "CONTEXTIQ_MEMORY_ADDR": f"127.0.0.1:{self.ports['memory']}",
            "CONTEXTIQ_EXTRACTION_ADDR": f"127.0.0.1:{self.ports['extraction']}",
            "CONTEXTIQ_GRPC_PORT": str(self.ports[service]),
            "CONTEXTIQ_DATA_DIR": str(self.tmp / service),
        }
        if service == "extraction":
            env.update(self.worker_env)
        return env

    async def start(self, service: str) -> None:
        """Start a service process and wait until it reports SERVING."""
        log = (self.tmp / f"{service}.log").open("ab")
        # Popen only forks and returns; the wait for readiness below is async.
        self.procs[service] = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", f"{service}_svc"],
            cwd=REPO,
            env=self.env(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        await self._wait_serving(service)

    async def _wait_serving(self, service: str) -> None:
        deadline = time.monotonic() + 90.0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.ports[service]}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                proc = self.procs[service]
                if proc.poll() is not None:
                    raise AssertionError(
                        f"{service} exited {proc.returncode}:\n{self.log(service)}"
                    )
                try:
                    answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{service} never became ready:\n{self.log(service)}")
                await asyncio.sleep(0.1)

    def kill(self, service: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` (kill -9 by default) to the service and reap it."""
        proc = self.procs.pop(service)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def log(self, service: str) -> str:
        path = self.tmp / f"{service}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        for service in list(self.procs):
            self.kill(service, signal.SIGTERM)

    # ----------------------------------------------------------------------- client side

    def _channel(self, service: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.ports[service]}")
        self.channels.append(channel)
        return channel

    async def session_with_turns(self, tenant: str, user_id: str, turns: list[str]) -> str:
        """A session of ``user_id`` with a user turn and an agent answer per text."""
        stub = session_service_pb2_grpc.SessionServiceStub(self._channel("sessions"))
        md = bearer(tenant)
        session = await stub.CreateSession(
            session_service_pb2.CreateSessionRequest(user_id=user_id), metadata=md
        )
        for text in turns:
            for author, said in (("user", text), ("agent", "Noted.")):
                await stub.AppendEvent(
                    session_service_pb2.AppendEventRequest(
                        session_id=session.id,
                        event=session_pb2.Event(
                            author=author,
                            content=session_pb2.Content(parts=[session_pb2.Part(text=said)]),
                        ),
                    ),
                    metadata=md,
                )
        return str(session.id)

    async def generate(self, tenant: str, session_id: str) -> str:
        stub = memory_service_pb2_grpc.MemoryServiceStub(self._channel("memory"))
        operation = await stub.GenerateMemories(
            generation_pb2.GenerateMemoriesRequest(
                source_type="session", source_reference=session_id
            ),
            metadata=bearer(tenant),
            timeout=30,
        )
        return str(operation.name)

    async def operation(self, tenant: str, name: str) -> operations_pb2.Operation:
        stub = operations_pb2_grpc.OperationsStub(self._channel("memory"))
        operation: operations_pb2.Operation = await stub.GetOperation(
            operations_pb2.GetOperationRequest(name=name), metadata=bearer(tenant), timeout=10
        )
        return operation

    async def wait_all_done(
        self, tenant: str, names: list[str], *, within_s: float = 120.0
    ) -> list[operations_pb2.Operation]:
        """Poll until every operation is done (retrying while the memory service restarts)."""
        deadline = time.monotonic() + within_s
        done: dict[str, operations_pb2.Operation] = {}
        while True:
            for name in names:
                if name in done:
                    continue
                try:
                    operation = await self.operation(tenant, name)
                except grpc.aio.AioRpcError:
                    break
                if operation.done:
                    done[name] = operation
            if len(done) == len(names):
                return [done[n] for n in names]
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in done]
                raise AssertionError(
                    f"{len(missing)} operations not done: {missing}\n"
                    f"--- extraction log\n{self.log('extraction')}"
                )
            await asyncio.sleep(0.2)

    async def wait_state(
        self, tenant: str, names: list[str], states: set[str], *, within_s: float = 60.0
    ) -> str:
        """Follow the operations' progress streams until one reaches one of ``states`` (a
        stream delivers every state, even one that lasts milliseconds); returns its name."""
        stub = memory_service_pb2_grpc.MemoryServiceStub(self._channel("memory"))

        async def follow(name: str) -> str:
            async for operation in stub.WatchOperation(
                memory_service_pb2.WatchOperationRequest(name=name), metadata=bearer(tenant)
            ):
                metadata = generation_pb2.GenerateMemoriesMetadata()
                operation.metadata.Unpack(metadata)
                if metadata.state in states:
                    return name
            await asyncio.Event().wait()  # ended without reaching one: let the others answer
            raise AssertionError("unreachable")

        watches = [asyncio.ensure_future(follow(name)) for name in names]
        try:
            done, _ = await asyncio.wait(
                watches, timeout=within_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise AssertionError(f"no operation reached {states}")
            return next(iter(done)).result()
        finally:
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def counts(self, tenant: str) -> dict[str, int]:
        """Rows in Postgres: memories, distinct (scope, fact), revisions, dead letters."""
        conn = await asyncpg.connect(self.db_dsn)
        try:
            memories = await conn.fetchval(
                "SELECT count(*) FROM memory.memories WHERE tenant_id = $1 AND deleted_at IS NULL",
                tenant,
            )
            distinct = await conn.fetchval(
                "SELECT count(DISTINCT (scope_key, fact)) FROM memory.memories "
                "WHERE tenant_id = $1 AND deleted_at IS NULL",
                tenant,
            )
            revisions = await conn.fetchval(
                "SELECT count(*) FROM memory.memory_revisions WHERE tenant_id = $1", tenant
            )
            # The same operation writing twice to one memory would be a duplicated revision.
            repeated = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM memory.memory_revisions WHERE tenant_id = $1 "
                "GROUP BY memory_id, operation_name HAVING count(*) > 1) twice",
                tenant,
            )
            dead = await conn.fetchval("SELECT count(*) FROM extraction.dead_letters")
        finally:
            await conn.close()
        return {
            "memories": int(memories),
            "distinct": int(distinct),
            "revisions": int(revisions),
            "repeated_revisions": int(repeated),
            "dead_letters": int(dead),
        }


def metadata_of(operation: operations_pb2.Operation) -> generation_pb2.GenerateMemoriesMetadata:
    metadata = generation_pb2.GenerateMemoriesMetadata()
    operation.metadata.Unpack(metadata)
    return metadata


def response_of(operation: operations_pb2.Operation) -> generation_pb2.GenerateMemoriesResponse:
    assert not operation.HasField("error"), operation.error
    response = generation_pb2.GenerateMemoriesResponse()
    assert operation.response.Unpack(response)
    return response
