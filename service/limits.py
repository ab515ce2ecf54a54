"""An ASGI middleware bounding request bodies: size (413, chunked uploads too) and pace (408).

A body larger than its cap is refused as soon as the cap is passed. A body that stalls for
``idle_timeout_s``, or arrives slower than ``min_rate`` bytes/s once ``grace_s`` have passed, is
refused with 408 and the connection closed: a slow client cannot hold a worker or a socket. A
request answered before its body was read (404, 401...) has its connection closed after the answer,
so the unread rest cannot be trickled in either.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class Pace:
    idle_timeout_s: float
    min_rate: float  # bytes per second, averaged from the request's start
    grace_s: float


class BodyLimits:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], pace: Pace) -> None:
        self.app, self.limit_for, self.pace = app, limit_for, pace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, f"request body larger than {limit} bytes")
            return
        pace, started = self.pace, time.monotonic()
        received, body_done, responded = 0, False, False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # waiting for a disconnect, not for the body
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), pace.idle_timeout_s)
            except TimeoutError:
                raise _Refused(408, f"request body stalled for {pace.idle_timeout_s:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                elapsed = time.monotonic() - started
                if received > limit:
                    raise _Refused(413, f"request body larger than {limit} bytes")
                if not body_done and elapsed > pace.grace_s and received < pace.min_rate * elapsed:
                    raise _Refused(408, f"request body slower than {pace.min_rate:g} bytes/s")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
                if not body_done and _has_body(scope):  # answered unread (404, 401...): drop the rest
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _Refused as refusal:
            if not responded:
                await _refuse(send, refusal.status_code, refusal.detail)


def _has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers", []))
    return headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers


class _Refused(HTTPException):
    """Raised from ``receive``; an HTTPException so that body parsers re-raise it unchanged and the
    app answers it itself; ``Connection: close`` drops the rest of the body with the connection."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail, headers={"Connection": "close"})


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
