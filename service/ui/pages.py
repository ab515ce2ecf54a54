"""The console's pages under ``/ui``: server-rendered HTML from the API's own answers.

Reads are public, as the API's reads are (``auth.py``); what needs the token (alias moves, private
artifact downloads) is sent by the page's script with the token the user typed, kept in the tab's
``sessionStorage``. Not in the OpenAPI schema: these are pages, not API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from reparam_core.deploy import WEIGHTS

from ..deps import ArtifactsDep, ExportsDep, MetadataDep, MetricsDep, SettingsDep
from ..errors import NotFound
from ..routes.models import get_model, get_version, list_models
from ..routes.params import NAME_PATTERN, ModelName, VersionNumber
from ..store import ArtifactStore
from . import views
from .latency import QUANTILES, LatencySampler, requests_by_status

HERE = Path(__file__).resolve().parent
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(sci=views.sci, size=views.size, when=views.when, clock=views.clock)
# an HTML pattern is compiled with the regex `v` flag, where a class' literal '-' must be escaped
templates.env.globals.update(name_pattern=NAME_PATTERN.strip("^$").replace("_-]", "_\\-]"))
# compiled now, at import: a page's first request would compile its template (Python's compile())
# on the event loop while a conversion may trace a net in a worker thread, and CPython 3.11 cannot
# build ASTs in two threads at once ("AST constructor recursion depth mismatch")
for _template in templates.env.list_templates():
    templates.env.get_template(_template)

router = APIRouter(prefix="/ui", include_in_schema=False)


def _present(artifacts: ArtifactStore, digest: str, names: list[str]) -> set[str]:
    """Which of a version's artifacts are stored (model.pt2 and model.onnx may not be, or not yet)."""
    try:
        folder = artifacts.local_path(digest)
    except ValueError:
        return set()
    return {name for name in names if (folder / name).is_file()}


def _weights_size(artifacts: ArtifactStore, digest: str) -> int | None:
    try:
        return (artifacts.local_path(digest) / WEIGHTS).stat().st_size
    except (OSError, ValueError):
        return None


async def _sizes(artifacts: ArtifactStore, digests: set[str]) -> dict[str, int | None]:
    sizes = await asyncio.gather(*(asyncio.to_thread(_weights_size, artifacts, d) for d in sorted(digests)))
    return dict(zip(sorted(digests), sizes, strict=True))


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings = request.app.state.settings
    context.setdefault("token_needed", bool(settings.api_token))
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def _not_found(request: Request, message: str) -> HTMLResponse:
    return _page(request, "not_found.html", status_code=404, title="Not found", message=message)


@router.get("", response_class=HTMLResponse)
async def models_page(request: Request, metadata: MetadataDep, artifacts: ArtifactsDep) -> HTMLResponse:
    models = await list_models(metadata)
    sizes = await _sizes(artifacts, {v["digest"] for m in models for v in m["versions"]})
    return _page(request, "models.html", title="Models", models=models, sizes=sizes)


@router.get("/models/{name}/versions/{version}", response_class=HTMLResponse)
async def version_page(
    request: Request,
    name: ModelName,
    version: VersionNumber,
    metadata: MetadataDep,
    artifacts: ArtifactsDep,
    exports: ExportsDep,
    settings: SettingsDep,
) -> HTMLResponse:
    try:
        detail = await get_version(name, version, metadata, artifacts, exports)
        model = await get_model(name, metadata)
    except NotFound as exc:
        return _not_found(request, str(exc))
    report = detail["report"]
    return _page(
        request,
        "version.html",
        title=f"{name} v{version}",
        v=detail,
        model=model,
        report=report,
        checks=views.checks(report),
        bars=views.timing_bars(detail["timings"]),
        quantization=report.get("quantization"),
        quantization_facts=views.quantization_facts(report.get("quantization")),
        weights_size=await asyncio.to_thread(_weights_size, artifacts, detail["digest"]),
        present=await asyncio.to_thread(_present, artifacts, detail["digest"], list(detail["artifacts"])),
        private_downloads=bool(settings.api_token) and not settings.public_downloads,
    )


@router.get("/latency", response_class=HTMLResponse)
async def latency_page(request: Request, metrics: MetricsDep) -> HTMLResponse:
    sampler: LatencySampler = request.app.state.latency
    series = sampler.series()
    start = min((s.at for s in sampler.samples), default=0.0)
    end = max((p.at for points in series.values() for p in points), default=start)
    charts = {key: views.latency_chart(points, start, end) for key, points in series.items()}
    return _page(
        request,
        "latency.html",
        title="Latency",
        overall=sampler.overall(),
        charts=charts,
        series=series,
        quantiles=QUANTILES,
        interval_s=sampler.interval_s,
        kept=sampler.samples.maxlen,
        requests=requests_by_status(metrics.requests),
    )


@router.get("/predict", response_class=HTMLResponse)
async def predict_page(request: Request, metadata: MetadataDep) -> HTMLResponse:
    models = await list_models(metadata)
    return _page(request, "predict.html", title="Predict", models=models)


@router.get("/static/{filename}")
async def static(filename: str) -> FileResponse:
    if filename not in STATIC:
        raise NotFound(f"no console file {filename!r}")
    return FileResponse(HERE / "static" / filename, media_type=STATIC[filename])
