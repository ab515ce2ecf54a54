"""Run the service: ``reparam serve`` or ``python -m service.main``."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .config import Settings, get_settings


def run(host: str | None = None, port: int | None = None) -> None:
    base = get_settings()
    settings = Settings(
        **{**base.model_dump(), **({"host": host} if host else {}), **({"port": port} if port else {})}
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll is noise
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    run()
