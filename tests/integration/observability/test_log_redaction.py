"""No secret reaches a log line: JWTs, ``ck_`` API keys, LLM keys, database and NATS passwords.

Every line the process logs (at DEBUG, every library included) is captured while it goes
through auth failures over gRPC and REST, settings dumps, unhandled errors, unreachable
database and NATS servers and a refused LLM call, then searched for each secret.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest

from ciq_runtime.auth import build_auth_interceptor
from ciq_runtime.db import create_engine, ping
from ciq_runtime.errors import ContextIQError
from ciq_runtime.logging import configure_logging, settings_secrets
from ciq_runtime.nats import connect_nats
from ciq_runtime.server import Component, GrpcServer, ServiceSpec, default_interceptors
from ciq_runtime.service_main import service_names
from ciq_runtime.settings import Settings
from contextiq.sessions.v1 import session_service_pb2, session_service_pb2_grpc
from extraction_svc.llm import LlmClient
from gateway.app import create_app
from gateway.server import serve
from gateway.settings import DEFAULT_SERVICES
from sessions_svc.apikeys.component import build_apikeys
from sessions_svc.component import build_component as build_sessions
from tests.auth_helpers import make_jwt
from tests.llm_server import MODEL, Reply, ScriptedLLM

JWT_SECRET = "jwt-signing-secret-" + secrets.token_hex(12)
BOOTSTRAP_KEY = "ck_boot_" + secrets.token_hex(16)
UNKNOWN_KEY = "ck_live_" + secrets.token_hex(16)
LLM_KEY = "sk-proj-" + secrets.token_hex(20)
DB_PASSWORD = "Pg-" + secrets.token_hex(10)
NATS_PASSWORD = "Nats-" + secrets.token_hex(10)
# A well-formed token signed with another secret: rejected, and must not be logged either.
FORGED_JWT = make_jwt("t-forged", secret="not-the-server-secret-" + secrets.token_hex(8))


@dataclasses.dataclass
class Captured:
    stream: io.StringIO

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]


@pytest.fixture
def captured(pg_url: str) -> Iterator[Captured]:
    """Every log line of the process, at DEBUG, in JSON, with the process's secrets known."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    configure_logging(
        service="redaction-test",
        level="DEBUG",
        stream=stream,
        secrets=settings_secrets(_settings(pg_url)),
    )
    try:
        yield Captured(stream)
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def _settings(pg_url: str) -> Settings:
    return Settings.from_env({}, service_name="sessions").replace(
        database_url=pg_url,
        nats_url=f"nats://ciq:{NATS_PASSWORD}@127.0.0.1:1",
        jwt_secret=JWT_SECRET,
        bootstrap_api_key=BOOTSTRAP_KEY,
        llm_api_key=LLM_KEY,
        llm_model=MODEL,
        rate_limit_per_minute=0,
        tenant_rate_limit_per_minute=0,
    )


@pytest.fixture
async def sessions_address(pg_url: str, captured: Captured) -> AsyncIterator[str]:
    settings = _settings(pg_url)
    keys = build_apikeys(settings)
    components = [keys.component, build_sessions(settings)]
    server = GrpcServer(
        host="127.0.0.1",
        port=0,
        components=components,
        interceptors=default_interceptors(
            build_auth_interceptor(
                settings, services=service_names(components), api_keys=keys.verifier
            )
        ),
    )
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop()


def _careless_component() -> Component:
    """A service that logs its metadata and fails with secrets in its exception."""

    async def boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        logging.getLogger("careless").debug(
            "metadata %s", dict(context.invocation_metadata() or ())
        )
        raise RuntimeError(
            f"cannot reach postgresql://ciq:{DB_PASSWORD}@db:5432/ciq with token "
            f"{FORGED_JWT} and key {LLM_KEY} (api_key={UNKNOWN_KEY})"
        )

    handler = grpc.method_handlers_generic_handler(
        "obs.Careless",
        {
            "Boom": grpc.unary_unary_rpc_method_handler(
                boom, request_deserializer=bytes, response_serializer=bytes
            )
        },
    )
    return Component(
        name="careless",
        services=[
            ServiceSpec(
                name="obs.Careless",
                register=lambda server: server.add_generic_rpc_handlers((handler,)),
            )
        ],
    )


async def _auth_failures(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        request = session_service_pb2.CreateSessionRequest(user_id="u1")
        for metadata in (
            (("authorization", f"Bearer {FORGED_JWT}"),),
            (("x-api-key", UNKNOWN_KEY),),
            (("authorization", f"Bearer {UNKNOWN_KEY}"),),
            (("x-api-key", BOOTSTRAP_KEY[:-3] + "zzz"),),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.CreateSession(request, metadata=metadata)
            assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # The real bootstrap key works (so it is in use, not just configured).
        await stub.CreateSession(request, metadata=(("x-api-key", BOOTSTRAP_KEY),))


async def _rest_auth_failures(address: str) -> None:
    app = create_app(
        routes_from=[s for s in DEFAULT_SERVICES if "sessions" in s],
        upstreams={s: address for s in DEFAULT_SERVICES if "sessions" in s},
    )
    gateway = await serve(app, host="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            for headers in (
                {"Authorization": f"Bearer {FORGED_JWT}"},
                {"X-API-Key": UNKNOWN_KEY},
            ):
                reply = await client.post(
                    "/api/v1/sessions", json={"user_id": "u1"}, headers=headers
                )
                assert reply.status_code == 401
    finally:
        await gateway.stop()


async def _unhandled_error() -> None:
    server = GrpcServer(host="127.0.0.1", port=0, components=[_careless_component()],
                        interceptors=default_interceptors())  # fmt: skip
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            boom = channel.unary_unary("/obs.Careless/Boom")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await boom(b"", metadata=(("authorization", f"Bearer {FORGED_JWT}"),))
            assert failed.value.code() is grpc.StatusCode.INTERNAL
            # The client is not told either.
            assert DB_PASSWORD not in (failed.value.details() or "")
    finally:
        await server.stop()


async def _unreachable_servers() -> None:
    log = logging.getLogger("unreachable")
    engine = create_engine(f"postgresql://ciq:{DB_PASSWORD}@127.0.0.1:1/ciq")
    try:
        await ping(engine, timeout_s=2.0)
    except ContextIQError:
        # With the traceback: the driver's exceptions are chained below the Unavailable.
        log.exception("database unreachable")
    finally:
        await engine.dispose()
    try:
        await connect_nats(f"nats://ciq:{NATS_PASSWORD}@127.0.0.1:1", name="t", connect_timeout=0.5)
    except ContextIQError:
        log.exception("NATS unreachable")


async def _refused_llm_call() -> None:
    llm = await ScriptedLLM().start()
    try:
        # Providers echo (part of) a rejected key in their error message.
        llm.push(Reply(status=401, content=f"Incorrect API key provided: {LLM_KEY}."))
        client = LlmClient(api_base=llm.api_base, api_key=LLM_KEY, timeout_s=5.0)
        try:
            await client.complete_json(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                schema_name="probe",
                schema={"type": "object"},
                validate=lambda payload: payload,
            )
        except ContextIQError as exc:
            logging.getLogger("worker").error("job failed: %s", exc.message)
    finally:
        await llm.stop()


async def test_no_secret_in_any_log_line(
    captured: Captured, sessions_address: str, pg_url: str
) -> None:
    settings = _settings(pg_url).replace(
        database_url=f"postgresql://ciq:{DB_PASSWORD}@db.internal:5432/ciq"
    )
    log = logging.getLogger("dump")
    log.info("settings", extra={"settings": settings.redacted_dict()})
    log.info("settings %r", settings)
    log.debug("careless dump %s", dataclasses.asdict(settings))
    log.debug("careless extra", extra={"raw": dataclasses.asdict(settings)})

    await _auth_failures(sessions_address)
    await _rest_auth_failures(sessions_address)
    await _unhandled_error()
    await _unreachable_servers()
    await _refused_llm_call()

    text = captured.stream.getvalue()
    lines = captured.lines()
    # The events happened and were logged (so the search below searched something).
    codes = [line.get("grpc_code") for line in lines]
    assert codes.count("UNAUTHENTICATED") >= 4
    assert any("unhandled exception" in line["message"] for line in lines)
    assert any(line["message"].startswith("careless dump") for line in lines)
    assert any(line["message"].startswith("metadata") for line in lines)
    assert any(line["message"].startswith("job failed") for line in lines)
    assert any("NATS unreachable" in line["message"] for line in lines)
    assert any("database unreachable" in line["message"] for line in lines)
    assert "[REDACTED]" in text
    for line in lines:
        assert {"timestamp", "level", "service", "logger", "message"} <= set(line)

    leaked = {
        name: secret
        for name, secret in {
            "JWT secret": JWT_SECRET,
            "forged JWT": FORGED_JWT,
            "bootstrap key": BOOTSTRAP_KEY,
            "unknown API key": UNKNOWN_KEY,
            "LLM key": LLM_KEY,
            "database password": DB_PASSWORD,
            "NATS password": NATS_PASSWORD,
        }.items()
        if secret in text
    }
    assert not leaked, f"secrets in the logs: {sorted(leaked)}"
