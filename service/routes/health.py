"""Liveness, readiness and Prometheus metrics.

``/healthz``: 200 while the service can go on, 503 once the supervisor has given up on a managed
TorchServe (``reparam serve`` then exits). ``/readyz``: 200 when the store answers and every stored
version is served; 503 otherwise, with the backend that serves, the supervisor's state and how many
versions are still pending. ``/system``: the CPU's inference capabilities (AVX2, AVX-512, native
bf16, AMX), the serving runtimes installed and the precisions each serves here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from reparam_core import __version__, resolve_device
from reparam_core.deploy import (
    CpuCapabilities,
    Runtime,
    cpu_capabilities,
    runtime_versions,
    served_precisions,
)

from ..deps import BackendDep, MetadataDep, MetricsDep, SupervisorDep

router = APIRouter(tags=["health"])


class Index(BaseModel):
    service: str
    version: str
    links: dict[str, str]


@router.get("/", summary="What this service is, and where to look", response_model=Index)
async def index() -> Index:
    links = {
        "console": "/ui",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "models": "/models",
        "readiness": "/readyz",
        "system": "/system",
        "metrics": "/metrics",
    }
    return Index(service="reparam", version=__version__, links=links)


@router.get("/healthz", summary="The process is alive and its backend supervised (503: given up)")
async def healthz(supervisor: SupervisorDep) -> JSONResponse:
    status = supervisor.status
    if status.state == "failed":
        return JSONResponse({"status": "failed", "detail": status.detail}, status_code=503)
    return JSONResponse({"status": "ok"})


class RuntimeInfo(BaseModel):
    version: str | None  # None: not installed here
    precisions: list[str]  # what it serves on this machine's CPU


class SystemInfo(BaseModel):
    cpu: CpuCapabilities
    bf16: bool  # native bf16 on this CPU: bf16 serving on the CPU is accepted
    device: str  # where runtime torch serves in this process (the ONNX runtimes: on the CPU)
    runtimes: dict[Runtime, RuntimeInfo]


@router.get(
    "/system", summary="The CPU's capabilities and the serving runtimes available", response_model=SystemInfo
)
async def system(backend: BackendDep) -> SystemInfo:
    cpu = cpu_capabilities()
    device = resolve_device(getattr(backend, "device", "auto"))
    runtimes = {
        name: RuntimeInfo(version=version, precisions=served_precisions(name, device) if version else [])
        for name, version in runtime_versions().items()
    }
    return SystemInfo(cpu=cpu, bf16=cpu.bf16, device=str(device), runtimes=runtimes)


@router.get(
    "/readyz",
    summary="The store answers and every stored version is served",
    responses={
        503: {"description": "not ready: the body says which part is not, and how many versions are pending"}
    },
)
async def readyz(metadata: MetadataDep, backend: BackendDep, supervisor: SupervisorDep) -> JSONResponse:
    try:
        store_ok = await asyncio.to_thread(metadata.ping)
    except Exception:  # any database error means not ready
        store_ok = False
    status = supervisor.status
    body: dict[str, Any] = {
        "store": store_ok,
        "backend": backend.name,
        "state": status.state,
        "pending": status.pending,
        "failed": list(status.failed),
        "detail": status.detail,
    }
    return JSONResponse(body, status_code=200 if store_ok and status.state == "ready" else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (latency histograms, conversions, requests)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
