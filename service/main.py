"""Run the service: ``reparam serve`` or ``python -m service.main``."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .config import Settings, get_settings
from .connections import header_deadline_protocol


def run(host: str | None = None, port: int | None = None) -> None:
    base = get_settings()
    settings = Settings(
        **{**base.model_dump(), **({"host": host} if host else {}), **({"port": port} if port else {})}
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll is noise
    uvicorn.Server(server_config(settings)).run()


def server_config(settings: Settings) -> uvicorn.Config:
    """uvicorn for ``settings``: its app, address, and the header deadline for slow clients."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        http=header_deadline_protocol(settings.header_timeout_s),
        timeout_keep_alive=5,
    )


if __name__ == "__main__":
    run()
