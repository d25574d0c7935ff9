"""NATS helpers against the session's real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from google.protobuf import duration_pb2
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType

from ciq_runtime.embedded import EmbeddedNats
from ciq_runtime.errors import Unavailable
from ciq_runtime.nats import (
    MSG_ID_HEADER,
    connect_nats,
    decode_proto,
    ensure_pull_consumer,
    ensure_stream,
    publish_proto,
)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect_nats(nats_url, name="runtime-tests")
    yield client
    await client.drain()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def stream_name() -> str:
    # The server is shared by the whole session: every test gets its own stream and subjects.
    return f"T{uuid.uuid4().hex[:12].upper()}"


async def test_ensure_stream_creates_then_is_idempotent(
    js: JetStreamContext, stream_name: str
) -> None:
    subjects = [f"{stream_name}.jobs.>"]
    await ensure_stream(js, name=stream_name, subjects=subjects, retention="workqueue")
    before = await js.stream_info(stream_name)
    await ensure_stream(js, name=stream_name, subjects=subjects, retention="workqueue")
    after = await js.stream_info(stream_name)
    assert after.config.retention == RetentionPolicy.WORK_QUEUE
    assert after.config.storage == StorageType.FILE
    assert after.config.duplicate_window == 120.0
    assert after.state.first_seq == before.state.first_seq
    assert after.created == before.created


async def test_ensure_stream_concurrently_from_many_processes(
    js: JetStreamContext, stream_name: str
) -> None:
    await asyncio.gather(
        *(
            ensure_stream(js, name=stream_name, subjects=[f"{stream_name}.>"], retention="limits")
            for _ in range(5)
        )
    )
    assert (await js.stream_info(stream_name)).config.retention == RetentionPolicy.LIMITS


async def test_ensure_stream_updates_changed_settings(
    js: JetStreamContext, stream_name: str
) -> None:
    await ensure_stream(js, name=stream_name, subjects=[f"{stream_name}.a"], retention="workqueue")
    await ensure_stream(
        js,
        name=stream_name,
        subjects=[f"{stream_name}.a", f"{stream_name}.b"],
        retention="workqueue",
        max_age_s=3600,
        duplicate_window_s=60,
    )
    config = (await js.stream_info(stream_name)).config
    assert sorted(config.subjects or []) == [f"{stream_name}.a", f"{stream_name}.b"]
    assert config.max_age == 3600
    assert config.duplicate_window == 60


async def test_pull_consumer_create_and_update(js: JetStreamContext, stream_name: str) -> None:
    subject = f"{stream_name}.generate"
    await ensure_stream(js, name=stream_name, subjects=[f"{stream_name}.>"], retention="workqueue")
    await ensure_pull_consumer(
        js, stream=stream_name, durable="gen", filter_subject=subject, ack_wait_s=30, max_deliver=5
    )
    info = await js.consumer_info(stream_name, "gen")
    assert info.config.ack_wait == 30
    assert info.config.max_deliver == 5
    assert info.config.max_ack_pending == 1000
    assert info.config.filter_subject == subject
    await ensure_pull_consumer(
        js,
        stream=stream_name,
        durable="gen",
        filter_subject=subject,
        ack_wait_s=30,
        max_deliver=5,
        backoff_s=[30, 60],
        max_ack_pending=10,
    )
    info = await js.consumer_info(stream_name, "gen")
    assert info.config.backoff == [30, 60]
    assert info.config.max_ack_pending == 10


@pytest.mark.parametrize(
    ("backoff", "max_deliver", "match"),
    [([5, 60], 5, "must be >= ack_wait_s"), ([30, 60, 90], 3, "fewer entries than max_deliver")],
)
async def test_pull_consumer_rejects_backoff_that_would_redeliver_running_jobs(
    js: JetStreamContext, backoff: list[float], max_deliver: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        await ensure_pull_consumer(
            js,
            stream="unused",
            durable="gen",
            filter_subject="unused",
            ack_wait_s=30,
            max_deliver=max_deliver,
            backoff_s=backoff,
        )


async def test_publish_deduplicates_on_msg_id_and_round_trips(
    js: JetStreamContext, stream_name: str
) -> None:
    subject = f"{stream_name}.generate"
    await ensure_stream(js, name=stream_name, subjects=[f"{stream_name}.>"], retention="workqueue")
    await ensure_pull_consumer(
        js, stream=stream_name, durable="gen", filter_subject=subject, ack_wait_s=30, max_deliver=3
    )
    job = duration_pb2.Duration(seconds=42)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    first = await publish_proto(
        js,
        subject,
        job,
        msg_id="op-1",
        headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    again = await publish_proto(js, subject, job, msg_id="op-1")
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq

    sub = await js.pull_subscribe(subject, durable="gen", stream=stream_name)
    [msg] = await sub.fetch(1, timeout=5)
    assert decode_proto(msg, duration_pb2.Duration) == job
    assert msg.headers is not None
    assert msg.headers[MSG_ID_HEADER] == "op-1"
    # The message continues the trace it was published in (the publish span's own id when a
    # tracer provider is installed, the caller's otherwise).
    assert msg.headers["traceparent"].split("-")[1] == trace_id
    await msg.ack_sync()
    assert (await js.stream_info(stream_name)).state.messages == 0


async def test_connect_gives_up_with_unavailable_after_the_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the socket is closed
    started = time.monotonic()
    with pytest.raises(Unavailable, match=f"cannot connect to NATS at nats://127.0.0.1:{port}"):
        await connect_nats(f"nats://127.0.0.1:{port}", name="t", connect_timeout=0.5)
    assert time.monotonic() - started < 3


async def test_connect_redacts_credentials_in_error() -> None:
    with pytest.raises(Unavailable) as info:
        await connect_nats("nats://user:hunter2@127.0.0.1:1", name="t", connect_timeout=0.3)
    assert "hunter2" not in info.value.message


async def test_client_reconnects_after_server_restart(
    nats_server: EmbeddedNats, stream_name: str
) -> None:
    client = await connect_nats(nats_server.url, name="restart-test")
    try:
        js = client.jetstream()
        subject = f"{stream_name}.x"
        await ensure_stream(js, name=stream_name, subjects=[subject], retention="limits")
        await nats_server.restart()
        async with asyncio.timeout(15):
            while not client.is_connected:  # noqa: ASYNC110 - polling the client's own state
                await asyncio.sleep(0.05)
        ack = await publish_proto(js, subject, duration_pb2.Duration(seconds=1), msg_id="after")
        assert ack.stream == stream_name
    finally:
        await client.drain()
