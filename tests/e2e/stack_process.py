"""Runs ``python -m ciq_runtime.stack`` (what ``make run`` runs) as a real child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "Press Ctrl-C to stop."
BOOTSTRAP_KEY = "ck_e2e_bootstrap_key_0123456789abcdef"


@dataclass
class StackPorts:
    """The four ports a stack listens on."""

    grpc: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    pg: int = field(default_factory=free_port)
    nats: int = field(default_factory=free_port)


class StackProcess:
    """One run of the launcher with its own data directory and ports."""

    def __init__(self, data_dir: Path, ports: StackPorts, **extra_env: str) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.env = {
            **os.environ,
            "CONTEXTIQ_DATA_DIR": str(data_dir),
            "CONTEXTIQ_GRPC_PORT": str(ports.grpc),
            "CONTEXTIQ_HTTP_PORT": str(ports.http),
            "CONTEXTIQ_PG_PORT": str(ports.pg),
            "CONTEXTIQ_NATS_PORT": str(ports.nats),
            "CONTEXTIQ_LOG_LEVEL": "WARNING",
            "CONTEXTIQ_BOOTSTRAP_API_KEY": BOOTSTRAP_KEY,
            **extra_env,
        }
        for name in ("DATABASE_URL", "NATS_URL", "QDRANT_URL", "CONTEXTIQ_AUTH_DISABLED"):
            self.env.pop(name, None)
        self.env = {k: v for k, v in self.env.items() if v != ""}
        self.proc: subprocess.Popen[str] | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._pumps: list[threading.Thread] = []

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def start(self, *, timeout: float = 90.0) -> None:
        """Start and wait for the ready banner; raise with the output if it never comes."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ciq_runtime.stack"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, ready)),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, None)),
        ]
        for pump in self._pumps:
            pump.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"stack did not come up (exit {self.proc.returncode}):\n" + self.output()
                )

    def run_to_exit(self, *, timeout: float = 90.0) -> int:
        """Run until the process exits on its own (for start-up failures)."""
        result = subprocess.run(
            [sys.executable, "-m", "ciq_runtime.stack"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.stdout = result.stdout.splitlines()
        self.stderr = result.stderr.splitlines()
        return result.returncode

    def stop(self, sig: signal.Signals = signal.SIGINT, *, timeout: float = 30.0) -> int:
        """Send ``sig`` (Ctrl-C by default) and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("stack did not stop in time:\n" + self.output()) from None
        for pump in self._pumps:
            pump.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])

    @staticmethod
    def _pump(stream: object, sink: list[str], ready: threading.Event | None) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))
            if ready is not None and line.startswith(READY_LINE):
                ready.set()


def processes_using(path: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose command line mentions ``path``."""
    pids = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state = stat.rpartition(")")[2].split()[0]
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids
