"""GET/POST /predict/{name}: decode, run on the backend, top-k with labels, timed per part."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from torch import Tensor

from ..deps import BackendDep, MetricsDep, SettingsDep, VersionsDep
from ..errors import BackendUnavailable, BadInput, NotFound, UnsupportedMedia
from ..images import IMAGE_TYPES, decode_base64_image, image_to_pixels, json_to_tensor

router = APIRouter(tags=["predict"])
MAX_TOP_K = 100


async def _resolve(versions: VersionsDep, name: str, version: int | None) -> tuple[int, dict[str, Any]]:
    """The version to serve (the latest unless one is asked for) and its architecture spec."""
    record = await versions.get(name, version)
    if record is None:
        what = f"version {version} of model {name!r}" if version is not None else f"model {name!r}"
        raise NotFound(f"no {what}")
    return record.version, record.spec


def _top_k(probabilities: Tensor, k: int, labels: list[str] | None) -> list[list[dict[str, Any]]]:
    values, indices = torch.topk(probabilities, min(k, probabilities.shape[1]), dim=1)
    return [
        [
            {"index": int(i), "label": labels[int(i)] if labels else None, "probability": float(p)}
            for p, i in zip(row_p, row_i, strict=True)
        ]
        for row_p, row_i in zip(values, indices, strict=True)
    ]


async def _answer(
    name: str,
    version: int | None,
    top_k: int,
    decode: Any,
    started: float,
    versions: VersionsDep,
    backend: BackendDep,
    metrics: MetricsDep,
) -> JSONResponse:
    resolved, spec = await _resolve(versions, name, version)
    batch = await asyncio.to_thread(decode, spec)
    decoded = time.perf_counter()
    try:
        probabilities = await backend.predict(name, resolved, batch)
    except BackendUnavailable:
        if await versions.gone(name, resolved):  # deleted while it was asked for
            raise NotFound(f"version {resolved} of model {name!r} was deleted") from None
        raise
    inferred = time.perf_counter()
    body = {
        "model": name,
        "version": resolved,
        "predictions": _top_k(probabilities, top_k, spec.get("labels")),
    }
    response = JSONResponse(body)
    total = time.perf_counter() - started
    labels = (name, str(resolved))
    metrics.predict_latency.labels(*labels).observe(total)
    metrics.predict_backend_latency.labels(*labels).observe(inferred - decoded)
    response.headers["Server-Timing"] = (
        f"decode;dur={(decoded - started) * 1e3:.3f}, backend;dur={(inferred - decoded) * 1e3:.3f}, "
        f"total;dur={total * 1e3:.3f}"
    )
    return response


TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K)]
Version = Annotated[int | None, Query(ge=1, description="default: the latest version")]


@router.get("/predict/{name}", summary="Classify an image given as URL-safe base64 in the query")
async def predict_get(
    name: str,
    image: Annotated[str, Query(description="URL-safe base64 PNG or JPEG")],
    versions: VersionsDep,
    backend: BackendDep,
    metrics: MetricsDep,
    top_k: TopK = 5,
    version: Version = None,
) -> JSONResponse:
    started = time.perf_counter()
    data = decode_base64_image(image)
    decode = lambda spec: image_to_pixels(data, spec["preprocess"], spec["in_channels"])  # noqa: E731
    return await _answer(name, version, top_k, decode, started, versions, backend, metrics)


@router.post(
    "/predict/{name}",
    summary='Classify PNG/JPEG bytes, or a JSON tensor {"inputs": [[...]], "top_k": 5}',
    openapi_extra={
        "requestBody": {
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {
                    "example": {"inputs": "[[[...]]] (C x H x W, preprocessed)", "top_k": 5}
                },
            }
        }
    },
)
async def predict_post(
    name: str,
    request: Request,
    versions: VersionsDep,
    backend: BackendDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    top_k: TopK = 5,
    version: Version = None,
) -> JSONResponse:
    started = time.perf_counter()
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if media in IMAGE_TYPES:
        decode = lambda spec: image_to_pixels(body, spec["preprocess"], spec["in_channels"])  # noqa: E731
    elif media == "application/json":
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            raise BadInput("body: not valid JSON") from None
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise BadInput('body: expected {"inputs": [...], "top_k": 5}')
        top_k = int(payload.get("top_k", top_k))
        if not 1 <= top_k <= MAX_TOP_K:
            raise BadInput(f"top_k must be between 1 and {MAX_TOP_K}")
        limit = settings.max_predict_bytes // 4
        decode = lambda spec: json_to_tensor(payload["inputs"], spec["in_channels"], limit)  # noqa: E731
    else:
        raise UnsupportedMedia(
            f"content type {media or 'none'!r}: send image/png, image/jpeg or application/json"
        )
    return await _answer(name, version, top_k, decode, started, versions, backend, metrics)
