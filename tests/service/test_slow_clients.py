"""Slow clients cannot hold connections: unfinished headers, stalled or trickling bodies, silence."""

from __future__ import annotations

import socket
import time
from typing import Any

from service.config import Settings

QUICK = {
    "header_timeout_s": 1.0,
    "body_idle_timeout_s": 1.0,
    "body_min_bytes_per_s": 1000,
    "body_grace_s": 1.0,
}


def closed_within(connection: socket.socket, seconds: float, trickle: bytes = b"") -> tuple[bool, bytes]:
    """Keep sending ``trickle`` once a second until the server closes; (closed in time, answer)."""
    connection.settimeout(0.2)
    deadline, answer = time.monotonic() + seconds, b""
    while time.monotonic() < deadline:
        try:
            if trickle:
                connection.sendall(trickle)
            chunk = connection.recv(4096)
            if not chunk:
                return True, answer
            answer += chunk
        except TimeoutError:
            time.sleep(0.8)
        except (BrokenPipeError, ConnectionResetError):
            return True, answer
    return False, answer


def test_slow_headers_slow_bodies_and_silence_are_cut_off(settings: Settings, live_server: Any) -> None:
    with live_server(settings.model_copy(update=QUICK)) as address:
        silent = [socket.create_connection(address) for _ in range(5)]
        headers = [socket.create_connection(address) for _ in range(5)]
        for connection in headers:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        bodies = [socket.create_connection(address) for _ in range(5)]
        for connection in bodies:
            connection.sendall(
                b"POST /convert HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n"
            )
        early = socket.create_connection(address)  # answered 404 before its body is read
        early.sendall(
            b"POST /predict/m HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 9999\r\n\r\n"
        )
        for connection in silent:
            assert closed_within(connection, 4)[0]
        for connection in headers:
            assert closed_within(connection, 4, trickle=b"X-Slow: 1\r\n")[0]
        for connection in bodies:
            closed, answer = closed_within(connection, 6, trickle=b"x")
            assert closed and answer.startswith(b"HTTP/1.1 408"), answer
        closed, answer = closed_within(early, 4, trickle=b"x")
        assert closed and answer.startswith(b"HTTP/1.1 404"), answer
        for connection in silent + headers + bodies + [early]:
            connection.close()
        with socket.create_connection(address) as fine:  # the server still answers
            fine.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert fine.recv(4096).startswith(b"HTTP/1.1 200")
