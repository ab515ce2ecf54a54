"""POST /convert (synchronous 201/200, or 202 + job URL) and GET /jobs/{id}."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from reparam_core import (
    MAX_CALIBRATION_SAMPLES,
    ArchSpec,
    SpecError,
    Weights,
    estimate_cost,
    parse_serving,
    parse_spec,
)

from ..auth import BEARER
from ..calibration import MAX_CALIBRATION_BYTES, read_images, save_calibration
from ..config import Settings
from ..deps import ConversionsDep, JobRunnerDep, MetadataDep, SettingsDep
from ..errors import NotFound, responses
from ..form_parts import TextPart, parse_labels, text_of
from ..jobs import JOINED, STAGES, ConversionOutcome, ConversionRequest, Upload
from ..store import VersionRecord
from ..store.metadata import JobState
from .params import NAME_PATTERN, JobId

router = APIRouter(tags=["convert"])
MAX_TOLERANCE = 1e-3  # looser than this proves nothing about a float64 fusion


def _affordable_spec(text: str, labels: list[str] | str | None, settings: Settings) -> ArchSpec:
    """The spec (with ``labels`` in place of its own, when given), parsed off the event loop, refused
    when its deploy net costs more than this service converts (``REPARAM_MAX_CONVERSION_GMACS`` /
    ``REPARAM_MAX_CONVERSION_PARAMS``)."""
    arch = parse_spec(text)
    if labels is not None:
        arch = parse_spec({**arch.model_dump(), "labels": labels})
    cost = estimate_cost(arch)
    if cost.macs > settings.max_conversion_gmacs * 1e9 or cost.params > settings.max_conversion_params:
        raise SpecError(
            f"spec {arch.name}: {cost.params / 1e6:.1f} M parameters and {cost.macs / 1e9:.1f} GMACs at "
            f"input_size {list(arch.input_size)}; this service converts at most "
            f"{settings.max_conversion_params / 1e6:.0f} M and {settings.max_conversion_gmacs:g} GMACs"
        )
    return arch


class ConversionResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "repvgg-a0",
                    "version": 1,
                    "created": True,
                    "digest": "3b1f0c9e5d...e2a",
                    "report": {
                        "passed": True,
                        "fp64": [{"max_rel_error": 1.1e-15}],
                        "serving": {"equivalence": {"dtype": "float16", "max_rel_error": 6.2e-4}},
                    },
                    "serving": {"precision": "fp16", "channels_last": True, "compile": False},
                    "timings": {
                        "read": 0.07,
                        "build": 0.08,
                        "fuse": 0.03,
                        "assemble": 0.01,
                        "validate": 0.93,
                    },
                    "links": {
                        "self": "/models/repvgg-a0/versions/1",
                        "predict": "/predict/repvgg-a0?version=1",
                    },
                }
            ]
        }
    )

    model: str
    version: int
    created: bool
    digest: str
    report: dict[str, Any]
    serving: dict[str, Any]
    timings: dict[str, Any]
    links: dict[str, str]


class JobAccepted(BaseModel):
    job: str
    status_url: str


class JobStatus(BaseModel):
    job: str
    model: str
    status: JobState
    result: dict[str, Any] | None = Field(
        description="succeeded: model, version, digest, created; failed: status, detail (and report)"
    )
    links: dict[str, str] | None = None
    stage: str | None = Field(
        description=f"the stage under way (of {', '.join(STAGES)}; '{JOINED}': waiting for an identical "
        "conversion); when failed, the stage it failed in; null when queued or succeeded"
    )
    stages: dict[str, float] = Field(description="seconds each finished stage took, in order")
    progress: float = Field(ge=0, le=1, description="the fraction of the stages finished")
    attempts: int = Field(
        description="replicas that started it (more than 1: the one running it stopped, another took over)"
    )
    replica: str | None = Field(description="the replica that runs it, or ran it last; null while queued")
    heartbeat_at: dt.datetime | None = Field(
        description="when that replica last said it is still running it (every REPARAM_JOB_HEARTBEAT_S)"
    )
    created_at: dt.datetime
    updated_at: dt.datetime


def _response(record: VersionRecord, created: bool) -> ConversionResponse:
    return ConversionResponse(
        model=record.name,
        version=record.version,
        created=created,
        digest=record.digest,
        report=record.report,
        serving=record.serving,
        timings=record.timings,
        links={
            "self": f"/models/{record.name}/versions/{record.version}",
            "predict": f"/predict/{record.name}?version={record.version}",
        },
    )


def _save(source: IO[bytes], folder: Path, filename: str, stored_as: str = "checkpoint") -> Upload:
    started, digest, size = time.perf_counter(), hashlib.sha256(), 0
    path = folder / stored_as
    with path.open("wb") as out:
        while block := source.read(1 << 20):
            digest.update(block)
            size += len(block)
            out.write(block)
    return Upload(path, digest.hexdigest(), size, filename, time.perf_counter() - started)


@router.post(
    "/convert",
    status_code=201,
    dependencies=[BEARER],
    response_model=ConversionResponse,
    summary="Convert a training checkpoint, prove equivalence, store and register the deploy model",
    responses={
        200: {"model": ConversionResponse, "description": "converted before: that version (created false)"},
        202: {"model": JobAccepted, "description": "accepted (`wait=false`): poll the job URL"},
        **responses(400, 401, 408, 409, 413, 503),
    },
)
async def convert_checkpoint(
    checkpoint: Annotated[
        UploadFile, File(description=".safetensors, .pt/.pth/.tar (read with weights_only)")
    ],
    spec: Annotated[
        TextPart,
        Form(
            description='JSON or YAML, as text or a file, e.g. {"family": "repvgg", "variant": "A0", '
            '"num_classes": 1000}'
        ),
    ],
    name: Annotated[str, Form(pattern=NAME_PATTERN, description="model name: letters, digits, '_' and '-'")],
    conversions: ConversionsDep,
    job_runner: JobRunnerDep,
    settings: SettingsDep,
    tolerance: Annotated[
        float | None,
        Form(gt=0, le=MAX_TOLERANCE, allow_inf_nan=False, description="max fp64 relative error"),
    ] = None,
    serving: Annotated[
        TextPart | None,
        Form(
            description='serving options, JSON (text or a file), e.g. {"precision": "fp16", '
            '"channels_last": true, "compile": true}; fields: runtime (torch|onnxruntime|openvino), '
            "precision (fp32|fp16|bf16|int8), channels_last, inference_mode, compile, compile_mode, "
            "warmup_iterations, int8_min_agreement, int8_float_layers (0-8|auto|[layer names])"
        ),
    ] = None,
    weights: Annotated[
        Weights,
        Form(description="a checkpoint with model and EMA weights: which to convert (auto: the model's)"),
    ] = "auto",
    reference: Annotated[
        UploadFile | None,
        File(
            description="optional safetensors file of 'inputs' [N,C,H,W] and your own model's 'outputs' "
            "[N,classes]: the deploy net is held to them too"
        ),
    ] = None,
    calibration: Annotated[
        list[UploadFile] | None,
        File(
            description=f"optional calibration images (PNG, JPEG or WebP; at most {MAX_CALIBRATION_SAMPLES}, "
            f"{MAX_CALIBRATION_BYTES >> 20} MiB in all), one file part each, preprocessed as /predict "
            "does: the report's 'quantization' section diagnoses each layer for INT8; serving precision "
            "int8 is calibrated on them (without them, on the reference's inputs)"
        ),
    ] = None,
    labels: Annotated[
        TextPart | None,
        Form(
            description="class names in place of the spec's labels, as text or a file: a JSON list, one "
            "name per line, or a standard set's name (imagenet-1k); as many as num_classes"
        ),
    ] = None,
    new_architecture: Annotated[
        bool,
        Form(description="true: accept a net that differs from the model's latest version (else 409)"),
    ] = False,
    wait: Annotated[bool, Query(description="false: answer 202 at once with a job URL")] = True,
) -> Any:
    names = None if labels is None else parse_labels(await text_of(labels, "labels"))
    arch = await asyncio.to_thread(_affordable_spec, await text_of(spec, "spec"), names, settings)
    options = parse_serving(None if serving is None else await text_of(serving, "serving"))
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=settings.resolved_artifacts_dir / "tmp"))
    try:
        filename = Path(checkpoint.filename or "checkpoint").name
        upload = await asyncio.to_thread(_save, checkpoint.file, folder, filename)
        expected = None
        if reference is not None:
            label = Path(reference.filename or "reference").name
            expected = await asyncio.to_thread(_save, reference.file, folder, label, "reference.safetensors")
        calibrated = None
        if calibration:
            images = await asyncio.to_thread(read_images, [part.file for part in calibration])
            calibrated = await asyncio.to_thread(save_calibration, images, arch, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    request = ConversionRequest(
        name,
        arch,
        upload,
        tolerance or settings.default_tolerance,
        options,
        weights,
        expected,
        new_architecture,
        calibrated,
    )
    if not wait:  # the job takes the upload folder from here on, as does `run` below
        job = await job_runner.submit(request)
        return JSONResponse(
            {"job": job, "status_url": f"/jobs/{job}"}, status_code=202, headers={"Location": f"/jobs/{job}"}
        )
    outcome: ConversionOutcome = await conversions.run(request)
    body = _response(outcome.record, outcome.created)
    return JSONResponse(body.model_dump(), status_code=201 if outcome.created else 200)


@router.get(
    "/jobs/{job_id}",
    dependencies=[BEARER],
    summary="Status of an asynchronous conversion (with the token, unless REPARAM_PUBLIC_DOWNLOADS)",
    response_model=JobStatus,
    responses=responses(401, 404),
)
async def get_job(job_id: JobId, metadata: MetadataDep) -> JobStatus:
    job = await asyncio.to_thread(metadata.get_job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    links = None
    if job.status == "succeeded" and job.result:
        links = {"version": f"/models/{job.name}/versions/{job.result['version']}"}
    done = len(STAGES) if job.status == "succeeded" else sum(stage in job.stages for stage in STAGES)
    return JobStatus(
        job=job.id,
        model=job.name,
        status=job.status,
        result=job.result,
        links=links,
        stage=job.stage,
        stages=job.stages,
        progress=round(done / len(STAGES), 3),
        attempts=job.attempts,
        replica=job.owner,
        heartbeat_at=job.heartbeat_at,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )
