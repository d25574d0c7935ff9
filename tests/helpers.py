"""Small helpers shared by the test-suite."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that is free on ``host`` right now.

    The port is released before returning, so another process could grab it; servers started on
    it report that as a clear "port in use" error rather than failing obscurely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    """Polls ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value.

    For conditions no event announces (a process disappearing); never a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


async def async_wait_for(
    predicate: Callable[[], bool],
    *,
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    interval: float = 0.02,
) -> bool:
    """Async :func:`wait_for`: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        await asyncio.sleep(interval)
    return True
