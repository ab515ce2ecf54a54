"""``create_app()``: wiring of settings, stores, backend and routers. Start-up starts the backend and
opens the port; the supervisor then registers every stored version in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from . import __doc__ as service_doc
from .auth import TokenGate
from .backends import start_backend
from .backends.supervisor import Supervisor
from .config import Settings, get_settings
from .errors import install_handlers
from .jobs import Conversions, Exports, JobRunner
from .limits import BodyLimits, Pace
from .metrics import CountRequests, Metrics
from .openapi import install_openapi
from .routes import aliases, convert, health, models, predict
from .store import ArtifactStore, MetadataStore, VersionCache, artifact_store_from_settings
from .store.job_inputs import job_inputs_from_settings
from .ui import LatencySampler
from .ui import router as ui_router

log = logging.getLogger("reparam.service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.state.metadata = MetadataStore(settings.resolved_database_url, settings.migrate_at_start)
    app.state.artifacts = artifact_store_from_settings(settings)
    app.state.versions = VersionCache(app.state.metadata, settings.version_cache_s)
    await asyncio.to_thread(_clean_up_after_a_stop, app.state.artifacts)
    backend = app.state.backend = await start_backend(settings)
    exports = app.state.exports = Exports(
        settings, app.state.metadata, app.state.artifacts, app.state.metrics
    )
    try:
        conversions = app.state.conversions = Conversions(
            settings,
            app.state.metadata,
            app.state.versions,
            app.state.artifacts,
            backend,
            app.state.metrics,
            exports,
        )
        supervisor = app.state.supervisor = Supervisor(
            settings,
            backend,
            app.state.metadata,
            app.state.artifacts,
            app.state.versions,
            app.state.metrics,
            on_give_up=app.state.on_give_up,
        )
        runner = app.state.job_runner = JobRunner(
            settings,
            app.state.metadata,
            job_inputs_from_settings(settings, app.state.artifacts),
            conversions,
        )
        await supervisor.start()
        runner.start()  # jobs a stopped replica left are taken over once their lease runs out
        app.state.latency.start()
        if resumed := await exports.resume():
            log.info(
                "%d versions stored without model.onnx or model.pt2: exporting in the background", resumed
            )
        log.info(
            "serving with the %s backend; stored versions are registered in the background", backend.name
        )
        try:
            yield
        finally:
            await runner.stop()
            await app.state.latency.stop()
            await supervisor.stop()
            conversions.close()
            await asyncio.to_thread(exports.close)
    finally:
        await backend.stop()


def _clean_up_after_a_stop(artifacts: ArtifactStore) -> None:
    """What a killed process left: uploads, work and staging folders (its jobs are taken over by a
    runner once their lease runs out)."""
    if removed := artifacts.clean_staging():
        log.warning("after an unclean stop: %d staging leftovers removed", removed)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPIOffline(  # /docs and /redoc from package files, no CDN
        title="reparam",
        version="0.1.0",
        description=(service_doc or "").strip()
        + "\n\nMutations, artifact downloads and job details need `Authorization: Bearer <token>` "
        "when REPARAM_API_TOKEN is set.",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.metrics = Metrics()
    app.state.latency = LatencySampler(app.state.metrics.predict_latency)  # the console's latency chart
    app.state.on_give_up = None  # what the server does when the supervisor gives up (``main.run``)
    install_handlers(app)
    install_openapi(app)
    for module in (convert, models, aliases, predict, health):
        app.include_router(module.router)
    app.include_router(ui_router)
    s = app.state.settings
    app.add_middleware(
        BodyLimits,
        limit_for=lambda path: s.max_upload_bytes if path == "/convert" else s.max_predict_bytes,
        pace=Pace(s.body_idle_timeout_s, s.body_min_bytes_per_s, s.body_grace_s),
    )
    app.add_middleware(TokenGate, settings=s)  # outside the size cap: strangers are refused unread
    app.add_middleware(CountRequests, metrics=app.state.metrics)
    return app
