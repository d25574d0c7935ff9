"""Servers die with the Python process that started them, even if it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ciq_runtime import embedded

REPO_ROOT = Path(__file__).resolve().parents[3]

PARENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from ciq_runtime.embedded import EmbeddedNats, EmbeddedPostgres

    async def main() -> None:
        base = Path(sys.argv[1])
        pg = EmbeddedPostgres(data_dir=base / "pg", durable=False)
        await pg.start()
        nats = EmbeddedNats(store_dir=base / "nats")
        await nats.start()
        print(pg.pid, nats.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``: the postmaster and its backends."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def test_servers_die_when_parent_is_killed(work_dir: Path) -> None:
    script = work_dir / "parent.py"
    script.write_text(PARENT_SCRIPT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(work_dir)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pg_pid, nats_pid = (int(x) for x in line.split())
        assert _group_members(pg_pid)  # postmaster + background workers are up
        assert embedded._proc_alive(nats_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _group_members(pg_pid) and not embedded._proc_alive(nats_pid):
            break
        time.sleep(0.05)
    assert _group_members(pg_pid) == []
    assert not embedded._proc_alive(nats_pid)
