"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import BackendDep, MetadataDep, MetricsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The store and the inference backend answer",
    responses={503: {"description": "not ready: the body says which part is not"}},
)
async def readyz(metadata: MetadataDep, backend: BackendDep) -> JSONResponse:
    try:
        store_ok = await asyncio.to_thread(metadata.ping)
    except Exception:  # any database error means not ready
        store_ok = False
    backend_ok = await backend.ready()
    body = {"store": store_ok, "backend": backend.name if backend_ok else False}
    return JSONResponse(body, status_code=200 if store_ok and backend_ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (latency histograms, conversions, requests)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
