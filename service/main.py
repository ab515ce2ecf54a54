"""Run the service: ``reparam serve`` or ``python -m service.main``.

Exit status: 0 after a stop by signal; 3 when start-up fails (``REPARAM_BACKEND=torchserve`` that
cannot start: one log line says why); 1 when the supervisor gave up on a managed TorchServe.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .app import create_app
from .backends import BackendStartError
from .config import Settings, get_settings
from .connections import header_deadline_protocol

log = logging.getLogger("reparam.service")


class OneLineStartupErrors:
    """ASGI wrapper: a backend that cannot start is logged in one line, not as uvicorn's traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        failure: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                failure.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except BackendStartError as exc:
            log.error("%s", exc)
            await send({"type": "lifespan.startup.failed", "message": ""})
        except BaseException:
            for message in failure:
                await send(message)
            raise


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonLines() if log_format == "json" else plain)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def run(host: str | None = None, port: int | None = None) -> None:
    base = get_settings()
    settings = Settings(
        **{**base.model_dump(), **({"host": host} if host else {}), **({"port": port} if port else {})}
    )
    configure_logging(settings.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll is noise
    app = create_app(settings)
    server = uvicorn.Server(server_config(settings, app))
    app.state.on_give_up = functools.partial(setattr, server, "should_exit", True)
    server.run()
    if not server.started:
        sys.exit(3)
    if app.state.supervisor.status.state == "failed":
        sys.exit(1)


def server_config(settings: Settings, app: FastAPI | None = None) -> uvicorn.Config:
    """uvicorn for ``settings``: the app (a new one unless given), its address, and the header
    deadline for slow clients."""
    return uvicorn.Config(
        OneLineStartupErrors(app or create_app(settings)),
        host=settings.host,
        port=settings.port,
        log_level="info",
        http=header_deadline_protocol(settings.header_timeout_s),
        timeout_keep_alive=5,
    )


if __name__ == "__main__":
    run()
