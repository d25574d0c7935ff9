"""Small helpers shared by the test-suite."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that is free on ``host`` right now.

    The port is released before returning, so another process could grab it; servers started on
    it report that as a clear "port in use" error rather than failing obscurely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
