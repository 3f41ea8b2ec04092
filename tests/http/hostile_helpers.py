"""Misbehaving HTTP clients for the hardening tests (issue 11): real sockets, blocking
calls meant for ``asyncio.to_thread``."""

from __future__ import annotations

import contextlib
import socket


def exchange(port: int, payload: bytes, wait_s: float = 15.0) -> bytes:
    """Send ``payload`` (as far as the server takes it) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(wait_s)
        with contextlib.suppress(OSError):  # the server stopped reading: it may have answered
            sock.sendall(payload)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer
