"""Serving the app with uvicorn, with a start/stop API for the launcher and tests.

The socket is bound before uvicorn starts so that a taken port fails ``start()`` with a one-line
``GatewayStartError`` (uvicorn alone would log and ``sys.exit``), and so that port 0 works: the
bound port is ``server.port``. uvicorn does not install its signal handlers here; the caller owns
signals (``python -m gateway`` does).

HTTP/1.1 is parsed by httptools (uvicorn's C parser; h11 costs about 0.1 ms more per request),
with no access log and no ``Server`` header. uvicorn writes a response's head and its body
with one ``send`` each, so a small response crossed the network as two segments and woke the
client twice; ``_HttpProtocol`` coalesces the writes made in one turn of the event loop into one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_log = logging.getLogger(__name__)


class GatewayStartError(RuntimeError):
    """The gateway could not start (port taken, lifespan failure)."""


class GatewayServer:
    """A uvicorn server for the gateway app.

    Use ``await server.start()`` / ``await server.stop()``, or ``async with``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        graceful_shutdown_s: int = 5,
    ) -> None:
        """Prepares the server; nothing is bound until ``start``.

        Args:
            app: The ASGI app (from ``create_app``).
            host: Interface to listen on.
            port: Port to listen on; 0 picks a free one.
            graceful_shutdown_s: How long ``stop`` lets open requests (and streams) finish.
        """
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",
            http=_HttpProtocol,
            log_config=None,  # the process configures logging, not uvicorn
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        self._host = host
        self._requested_port = port
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one when 0 was asked)."""
        if self._socket is None:
            raise RuntimeError("the gateway is not started")
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Binds the port, runs the app's start-up, and starts serving.

        Raises:
            GatewayStartError: The port is taken or cannot be bound, or start-up failed.
        """
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        sock = _bind(self._host, self._requested_port)
        config = self._config
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except SystemExit:  # uvicorn's way of reporting a failed lifespan start-up
            sock.close()
            raise GatewayStartError("the gateway's start-up failed (see the log)") from None
        if server.should_exit:
            sock.close()
            raise GatewayStartError("the gateway's start-up failed (see the log)")
        self._server = server
        self._socket = sock
        self._task = asyncio.create_task(server.main_loop(), name="gateway-uvicorn")
        _log.info("REST gateway listening on %s", self.url)

    async def stop(self) -> None:
        """Stops accepting, lets open requests finish (up to the grace period), closes."""
        server, task, sock = self._server, self._task, self._socket
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        finally:
            await server.shutdown(sockets=[sock] if sock is not None else None)
            self._server = None
            self._task = None
            self._socket = None

    async def wait(self) -> None:
        """Waits until the server stops (``stop`` called from elsewhere)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(app: ASGIApp, *, host: str, port: int) -> GatewayServer:
    """Starts serving an app and returns the running server (``await server.stop()``).

    Raises:
        GatewayStartError: The port is taken or start-up failed.
    """
    server = GatewayServer(app, host=host, port=port)
    await server.start()
    return server


class _CoalescingTransport(asyncio.Transport):
    """A socket transport whose writes within one event-loop turn leave in one ``send``.

    The first write of a turn schedules the flush (``call_soon``); the writes after it in the
    same turn join the buffer. The protocol flushes at once when a response is complete, and
    closing flushes first. Everything else is the wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Writes what is buffered (a no-op when nothing is)."""
        pending = self._pending
        if pending:
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class _HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``_CoalescingTransport``, flushed when a response
    is complete (a whole small response leaves in one ``send``, without waiting a turn)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._coalescing = _CoalescingTransport(transport, self.loop)
        super().connection_made(self._coalescing)

    def on_response_complete(self) -> None:
        self._coalescing.flush()
        super().on_response_complete()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio enables TCP_NODELAY only on sockets whose proto says TCP,
    # and accepted connections inherit it. With proto 0, Nagle's algorithm meets the client's
    # delayed ACK and every response waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Lets a restarted gateway rebind while old connections sit in TIME_WAIT; on Linux it
        # does not allow two listeners on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise GatewayStartError(
                f"cannot listen on {host}:{port}: the port is already in use"
            ) from None
        raise GatewayStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
