"""GET/POST /predict/{name}: decode, run on the backend, top-k with labels, timed per part."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from ..deps import BackendDep, MetricsDep, SettingsDep, VersionsDep
from ..errors import (
    BackendUnavailable,
    BadInput,
    NotFound,
    UnsupportedMedia,
    URITooLong,
    describe_problems,
    responses,
)
from ..images import IMAGE_TYPES, decode_base64_image, images_to_pixels, json_to_tensor
from .params import ModelName, VersionQuery

router = APIRouter(tags=["predict"])
MAX_TOP_K = 100
MAX_IMAGES = 64  # images in one request (JSON or multipart)
MULTIPART = "multipart/form-data"
EXAMPLE_PNG = (  # an 8x8 orange PNG: the OpenAPI example works as sent, whatever the model's input size
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8UaHBgA0wMeAAg1MCAB4nAXgllso1AAAAAElFTkSuQmCC"
)
MAX_QUERY_IMAGE = 32 * 1024  # base64 characters: URLs past ~48 kB are refused by HTTP servers


class Prediction(BaseModel):
    index: int
    label: str | None
    probability: float


class PredictionResponse(BaseModel):
    model: str
    version: int
    predictions: list[list[Prediction]] = Field(description="per input image, the top-k classes")


class JsonRequest(BaseModel):
    """Either several images (base64, each preprocessed as the spec says) or a preprocessed float
    batch ``[C, H, W]`` / ``[N, C, H, W]`` as nested lists; answered in order, as one batch."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IMAGES,
        description=f"base64 PNG, JPEG or WebP files (standard or URL-safe), at most {MAX_IMAGES}",
    )
    inputs: list[Any] | None = Field(
        default=None, min_length=1, description="nested lists of numbers: [C, H, W] or [N, C, H, W]"
    )
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K, description="overrides the query's top_k")

    @model_validator(mode="after")
    def _one_kind(self) -> JsonRequest:
        if (self.images is None) == (self.inputs is None):
            raise ValueError("give either 'images' or 'inputs'")
        return self


def _decode(images: list[bytes], draft: bool, spec: dict[str, Any]) -> Tensor:
    """Every image decoded and cropped as the spec says: uint8 pixels ``[N, S, S, C]``."""
    return images_to_pixels(images, spec["preprocess"], spec["in_channels"], draft)


def _decode_base64(images: list[str], draft: bool, spec: dict[str, Any]) -> Tensor:
    return _decode([decode_base64_image(image) for image in images], draft, spec)


async def _form_images(request: Request) -> list[bytes]:
    """The ``images`` file parts of a multipart body, in order (at most ``MAX_IMAGES``)."""
    async with request.form(max_files=MAX_IMAGES, max_fields=MAX_IMAGES) as form:
        others = sorted({key for key in form if key != "images"})
        if others:
            raise BadInput(f"unexpected form field {', '.join(map(repr, others))}: send 'images' file parts")
        parts = form.getlist("images")
        if not parts:
            raise BadInput("no 'images' file part in the form")
        images = []
        for part in parts:
            if isinstance(part, str):
                raise BadInput("'images' must be file parts (curl -F images=@photo.jpg), not text")
            images.append(await part.read())
    return images


async def _resolve(versions: VersionsDep, name: str, version: int | str | None) -> tuple[int, dict[str, Any]]:
    """The version to serve (asked for by number or alias, else the default) and its spec."""
    record = await versions.get(name, version)
    if record is None:
        if isinstance(version, str):
            raise NotFound(f"no alias {version!r} of model {name!r} (or its version is being deleted)")
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
    resolved: tuple[int, dict[str, Any]],
    top_k: int,
    decode: Callable[[dict[str, Any]], Tensor],
    started: float,
    versions: VersionsDep,
    backend: BackendDep,
    metrics: MetricsDep,
) -> JSONResponse:
    version, spec = resolved
    batch = await asyncio.to_thread(decode, spec)
    decoded = time.perf_counter()
    try:
        probabilities = await backend.predict(name, version, batch)
    except BackendUnavailable:
        if await versions.gone(name, version):  # deleted while it was asked for
            raise NotFound(f"version {version} of model {name!r} was deleted") from None
        raise
    inferred = time.perf_counter()
    body = {
        "model": name,
        "version": version,
        "predictions": _top_k(probabilities, top_k, spec.get("labels")),
    }
    response = JSONResponse(body)
    total = time.perf_counter() - started
    labels = (name, str(version))
    metrics.predict_latency.labels(*labels).observe(total)
    metrics.predict_backend_latency.labels(*labels).observe(inferred - decoded)
    response.headers["Server-Timing"] = (
        f"decode;dur={(decoded - started) * 1e3:.3f}, backend;dur={(inferred - decoded) * 1e3:.3f}, "
        f"total;dur={total * 1e3:.3f}"
    )
    return response


TopK = Annotated[int, Query(ge=1, le=MAX_TOP_K)]
ANSWERS: dict[int | str, dict[str, Any]] = {200: {"model": PredictionResponse}, **responses(404, 413, 503)}


@router.get(
    "/predict/{name}",
    summary=f"Classify an image given as URL-safe base64 in the query (at most {MAX_QUERY_IMAGE} characters)",
    responses={**ANSWERS, **responses(404, 414, 503)},
    response_model=PredictionResponse,
)
async def predict_get(
    name: ModelName,
    image: Annotated[
        str,
        Query(
            description=f"URL-safe base64 PNG, JPEG or WebP, at most {MAX_QUERY_IMAGE} characters (else 414)"
        ),
    ],
    versions: VersionsDep,
    backend: BackendDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    version: VersionQuery,
    top_k: TopK = 5,
) -> JSONResponse:
    started = time.perf_counter()
    if len(image) > MAX_QUERY_IMAGE:
        raise URITooLong(
            f"image of {len(image)} base64 characters in the query: at most {MAX_QUERY_IMAGE}; POST it"
        )
    resolved = await _resolve(versions, name, version)
    decode = functools.partial(_decode, [decode_base64_image(image)], settings.jpeg_draft)
    return await _answer(name, resolved, top_k, decode, started, versions, backend, metrics)


@router.post(
    "/predict/{name}",
    summary="Classify PNG/JPEG/WebP bytes, several as multipart 'images' parts, or JSON",
    description=(
        "An image is decoded by its content, whichever of the image types labels it. Several images "
        f"(at most {MAX_IMAGES}) are answered in order as one batch: multipart/form-data with one "
        '`images` file part each, or JSON `{"images": [base64, ...]}`; JSON `{"inputs": [[...]]}` '
        "is a preprocessed float batch."
    ),
    responses={**ANSWERS, **responses(404, 408, 413, 415, 503)},
    response_model=PredictionResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                **{media: {"schema": {"type": "string", "format": "binary"}} for media in IMAGE_TYPES},
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "minItems": 1,
                                "maxItems": MAX_IMAGES,
                            }
                        },
                        "required": ["images"],
                    }
                },
                "application/json": {
                    "schema": JsonRequest.model_json_schema(),
                    "example": {"images": [EXAMPLE_PNG], "top_k": 2},
                },
            },
        }
    },
)
async def predict_post(
    name: ModelName,
    request: Request,
    versions: VersionsDep,
    backend: BackendDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    version: VersionQuery,
    top_k: TopK = 5,
) -> JSONResponse:
    started = time.perf_counter()
    resolved = await _resolve(versions, name, version)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (*IMAGE_TYPES, MULTIPART, "application/json"):
        raise UnsupportedMedia(
            f"content type {media or 'none'!r}: "
            f"send {', '.join(IMAGE_TYPES)}, {MULTIPART} or application/json"
        )
    decode: Callable[[dict[str, Any]], Tensor]
    if media == MULTIPART:
        decode = functools.partial(_decode, await _form_images(request), settings.jpeg_draft)
        return await _answer(name, resolved, top_k, decode, started, versions, backend, metrics)
    body = await request.body()
    if media in IMAGE_TYPES:
        one = functools.partial(_decode, [body], settings.jpeg_draft)
        return await _answer(name, resolved, top_k, one, started, versions, backend, metrics)
    try:
        payload = JsonRequest.model_validate_json(body)
    except ValidationError as exc:
        raise BadInput(describe_problems(exc.errors(), ("body",))) from None
    limit = settings.max_predict_bytes // 4
    if payload.images is not None:
        decode = functools.partial(_decode_base64, payload.images, settings.jpeg_draft)
    else:
        decode = lambda spec: json_to_tensor(payload.inputs, spec["in_channels"], limit)  # noqa: E731
    return await _answer(name, resolved, payload.top_k or top_k, decode, started, versions, backend, metrics)
