"""EmbeddedPostgres: lifecycle, persistence and the errors users can fix."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from pathlib import Path

import asyncpg
import pytest

from ciq_runtime import embedded
from ciq_runtime.embedded import EmbeddedError, EmbeddedPostgres
from tests.helpers import free_port


def _one_line(err: pytest.ExceptionInfo[EmbeddedError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


async def test_data_survives_restart(work_dir: Path) -> None:
    data_dir = work_dir / "pg"
    server = EmbeddedPostgres(data_dir=data_dir, durable=False)
    handle = await server.start()
    try:
        assert handle.url == f"postgresql+asyncpg://postgres@127.0.0.1:{handle.port}/contextiq"
        assert handle.dsn == f"postgresql://postgres@127.0.0.1:{handle.port}/contextiq"
        assert handle.data_dir == data_dir
        conn = await asyncpg.connect(handle.dsn)
        try:
            await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            await conn.execute("INSERT INTO notes VALUES (1, 'kept')")
            extensions = await conn.fetchval("SELECT array_agg(extname::text) FROM pg_extension")
            assert "vector" in extensions
        finally:
            await conn.close()
        pid = server.pid
        assert pid is not None
    finally:
        await server.stop()
    assert server.pid is None
    assert not embedded._proc_alive(pid)
    await server.stop()  # idempotent
    server.stop_sync()

    again = EmbeddedPostgres(data_dir=data_dir, durable=False)
    handle = await again.start()
    try:
        conn = await asyncpg.connect(handle.dsn)
        try:
            assert await conn.fetchval("SELECT body FROM notes WHERE id = 1") == "kept"
        finally:
            await conn.close()
    finally:
        again.stop_sync()


async def test_explicit_port_is_used(cluster_dir: Path) -> None:
    port = free_port()
    server = EmbeddedPostgres(data_dir=cluster_dir, port=port, database="other")
    handle = await server.start()
    try:
        assert handle.port == port
        assert handle.dsn.endswith(f":{port}/other")
        conn = await asyncpg.connect(handle.dsn)
        await conn.close()
    finally:
        await server.stop()


def test_start_sync_and_stop_sync(cluster_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir=cluster_dir)
    handle = server.start_sync()
    try:
        assert server.start_sync() == handle  # already running: same handle
    finally:
        server.stop_sync()
    assert server.pid is None


@pytest.mark.parametrize("kind", ["dead", "recycled"])
async def test_stale_pid_file_is_removed(cluster_dir: Path, kind: str) -> None:
    if kind == "dead":
        child = await asyncio.create_subprocess_exec("true")
        await child.wait()
        pid = child.pid  # reaped: nothing runs under this pid any more
    else:
        pid = 1  # alive, but not a postmaster in this data directory
    (cluster_dir / "postmaster.pid").write_text(
        f"{pid}\n{cluster_dir}\n1700000000\n5432\n\n127.0.0.1\n  1 2\nready\n"
    )
    server = EmbeddedPostgres(data_dir=cluster_dir, durable=False)
    handle = await server.start()
    try:
        conn = await asyncpg.connect(handle.dsn)
        await conn.close()
    finally:
        await server.stop()


async def test_second_instance_on_same_data_dir_is_refused(cluster_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir=cluster_dir, durable=False)
    handle = await first.start()
    try:
        with pytest.raises(EmbeddedError) as err:
            await EmbeddedPostgres(data_dir=cluster_dir, durable=False).start()
        message = _one_line(err)
        assert f"is already running on {cluster_dir}" in message
        assert "CONTEXTIQ_DATA_DIR" in message
        conn = await asyncpg.connect(handle.dsn)  # the first one is unharmed
        await conn.close()
    finally:
        await first.stop()


async def test_port_in_use_is_reported(cluster_dir: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(EmbeddedError) as err:
            await EmbeddedPostgres(data_dir=cluster_dir, port=port).start()
    assert _one_line(err) == (
        f"port {port} on 127.0.0.1 is in use: stop the other process "
        "or set CONTEXTIQ_PG_PORT to a free port"
    )


async def test_port_taken_after_check_is_detected_from_log(
    cluster_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates losing the race between our check and postgres binding the port.
    monkeypatch.setattr(embedded, "_port_is_free", lambda host, port: True)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = EmbeddedPostgres(data_dir=cluster_dir, port=port)
        with pytest.raises(EmbeddedError, match=f"port {port} on 127.0.0.1 is in use"):
            await server.start()
    assert server.pid is None


async def test_directory_without_pg_version_is_refused(work_dir: Path) -> None:
    data_dir = work_dir / "pg"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("not a database")
    with pytest.raises(EmbeddedError) as err:
        await EmbeddedPostgres(data_dir=data_dir).start()
    assert _one_line(err) == (
        f"{data_dir} is not a usable PostgreSQL data directory (no PG_VERSION file): "
        "move it away or set CONTEXTIQ_DATA_DIR to a new folder"
    )


async def test_data_dir_that_is_a_file_is_refused(work_dir: Path) -> None:
    data_dir = work_dir / "pg"
    data_dir.write_text("oops")
    with pytest.raises(EmbeddedError, match="it is not a directory"):
        await EmbeddedPostgres(data_dir=data_dir).start()


async def test_data_dir_postgres_rejects_is_reported(cluster_dir: Path, work_dir: Path) -> None:
    # A copy made as root (ownership gets fixed) of a cluster from an unknown major version.
    data_dir = work_dir / "pg"
    shutil.copytree(cluster_dir, data_dir, symlinks=True)
    (data_dir / "PG_VERSION").write_text("99\n")
    server = EmbeddedPostgres(data_dir=data_dir)
    with pytest.raises(EmbeddedError) as err:
        await server.start()
    message = _one_line(err)
    assert message.startswith(f"{data_dir} is not a usable PostgreSQL data directory (")
    assert "database files are incompatible with server" in message
    assert "version 99" in message
    assert message.endswith("move it away or set CONTEXTIQ_DATA_DIR to a new folder")
    assert server.pid is None


async def test_stop_kills_a_hung_server_and_next_start_recovers(cluster_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir=cluster_dir, durable=False)
    await server.start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a postmaster that ignores the fast-shutdown request
    await server.stop(timeout=0.5)
    assert not embedded._proc_alive(pid)

    # postmaster.pid is left behind by the kill; the next start clears it and recovers.
    again = EmbeddedPostgres(data_dir=cluster_dir, durable=False)
    handle = await again.start()
    try:
        conn = await asyncpg.connect(handle.dsn)
        await conn.close()
    finally:
        await again.stop()
