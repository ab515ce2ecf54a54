"""Connections that cannot be held open by a client that never finishes its request headers.

Uvicorn times out idle keep-alive connections, but not a connection that sends nothing after
connecting, nor one that trickles its headers a byte at a time (slowloris): each would hold a
socket and a file descriptor forever. This protocol closes a connection whose request headers are
not complete ``header_timeout`` seconds after it opened or after its request began. Slow bodies
are bounded by ``limits.BodyLimits``.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def header_deadline_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on every request's headers."""

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

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.logger.info(
                    "closing a connection whose request headers took over %.0f s", header_timeout
                )
                self.transport.close()

    return HeaderDeadline
