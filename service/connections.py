"""Connections that cannot be held open by a client that never finishes its request headers, and
request lines too long for the HTTP parser answered as the API answers (414, JSON).

Uvicorn times out idle keep-alive connections, but not a connection that sends nothing after
connecting, nor one that trickles its headers a byte at a time (slowloris): each would hold a
socket and a file descriptor forever. This protocol closes a connection whose request headers are
not complete ``header_timeout`` seconds after it opened or after its request began. Slow bodies
are bounded by ``limits.BodyLimits``. The HTTP parser refuses request headers past ~64 kB with a
plain-text 400; when the URL is what overflowed, the answer is a JSON 414 like the API's own.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LONG_URL = 16 * 1024  # a URL this long when the parser gave up is why it gave up


def header_deadline_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on every request's headers (and JSON 414s)."""

    class HeaderDeadline(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def send_400_response(self, msg: str) -> None:
            if len(getattr(self, "url", b"")) < LONG_URL:
                super().send_400_response(msg)
                return
            body = json.dumps({"detail": "request line too long: send large inputs in a POST body"}).encode()
            head = (
                b"HTTP/1.1 414 Request-URI Too Long\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            self.transport.write(head + body)
            self.transport.close()

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.logger.info(
                    "closing a connection whose request headers took over %.0f s", header_timeout
                )
                self.transport.close()

    return HeaderDeadline
