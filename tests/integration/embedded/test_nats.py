"""EmbeddedNats: JetStream persistence across restarts and port errors."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from ciq_runtime import embedded
from ciq_runtime.embedded import EmbeddedError, EmbeddedNats


async def test_jetstream_message_survives_restart(work_dir: Path) -> None:
    server = EmbeddedNats(store_dir=work_dir / "nats")
    url = await server.start()
    try:
        port = server.port
        assert url == f"nats://127.0.0.1:{port}"
        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            js = nc.jetstream()
            await js.add_stream(name="JOBS", subjects=["jobs.>"])
            ack = await js.publish("jobs.extract", b"payload-1")
            assert ack.seq == 1
        finally:
            await nc.close()

        old_pid = server.pid
        await server.restart()
        assert server.port == port
        new_pid = server.pid
        assert new_pid is not None
        assert new_pid != old_pid

        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe("jobs.>", durable="worker", stream="JOBS")
            (msg,) = await sub.fetch(1, timeout=2)
            assert msg.data == b"payload-1"
            await msg.ack()
        finally:
            await nc.close()
    finally:
        await server.stop()
    assert server.pid is None
    await server.stop()  # idempotent
    server.stop_sync()


def test_start_sync_and_stop_sync(work_dir: Path) -> None:
    server = EmbeddedNats(store_dir=work_dir / "nats")
    url = server.start_sync()
    try:
        assert server.start_sync() == url  # already running
        pid = server.pid
        assert pid is not None
    finally:
        server.stop_sync()
    assert not embedded._proc_alive(pid)


async def test_port_in_use_is_reported(work_dir: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(EmbeddedError) as err:
            await EmbeddedNats(store_dir=work_dir / "nats", port=port).start()
    assert str(err.value) == (
        f"port {port} on 127.0.0.1 is in use: stop the other process "
        "or set CONTEXTIQ_NATS_PORT to a free port"
    )


async def test_port_taken_after_check_is_detected_from_log(
    work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates losing the race between our check and nats-server binding the port.
    monkeypatch.setattr(embedded, "_port_is_free", lambda host, port: True)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = EmbeddedNats(store_dir=work_dir / "nats", port=port)
        with pytest.raises(EmbeddedError) as err:
            await server.start()
    assert "\n" not in str(err.value)
    assert f"port {port} on 127.0.0.1 is in use" in str(err.value)
    assert server.pid is None
