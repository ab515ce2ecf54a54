"""The bearer token (``REPARAM_API_TOKEN``), checked before any request body is read.

An ASGI middleware rather than a FastAPI dependency: FastAPI parses form bodies (a 2 GB upload)
before it runs dependencies, so a dependency would refuse a stranger only after storing the upload.
Protected: every mutating request (POST/PUT/PATCH/DELETE) except ``/predict``, and, unless
``REPARAM_PUBLIC_DOWNLOADS`` is set, artifact downloads (the weights) and job details.
"""

from __future__ import annotations

import json
import re
import secrets

from fastapi import Security
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import Settings

READS = frozenset({"GET", "HEAD", "OPTIONS"})
PRIVATE_READS = re.compile(r"/jobs/[^/]+|/models/[^/]+/versions/[^/]+/artifacts/[^/]+")

# Documents the scheme in the OpenAPI schema of the protected routes; TokenGate enforces it.
BEARER = Security(HTTPBearer(auto_error=False, description="REPARAM_API_TOKEN, when the service has one"))


def needs_token(method: str, path: str, public_downloads: bool) -> bool:
    if path.startswith("/predict/"):
        return False
    if method not in READS:
        return True
    return not public_downloads and PRIVATE_READS.fullmatch(path) is not None


class TokenGate:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = self.settings.api_token
        if (
            scope["type"] == "http"
            and expected
            and needs_token(scope["method"], scope["path"], self.settings.public_downloads)
            and not _carries(scope, expected)
        ):
            await _unauthorized(send)
            return
        await self.app(scope, receive, send)


def _carries(scope: Scope, expected: str) -> bool:
    header = dict(scope.get("headers", [])).get(b"authorization", b"")
    scheme, _, token = header.partition(b" ")
    return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), expected.encode())


async def _unauthorized(send: Send) -> None:
    body = json.dumps({"detail": "missing or invalid bearer token"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
        (b"connection", b"close"),  # the body, if any, is not read
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
