"""The versioned registry: list, describe, download, delete (a version or a whole model)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from ..auth import BEARER
from ..deps import ActorDep, ArtifactsDep, ConversionsDep, ExportsDep, MetadataDep
from ..errors import NotFound, NotReady, responses
from ..store import VersionRecord
from ..store.artifacts import FILES
from ..store.metadata import AliasRecord
from .params import ModelName, VersionNumber

router = APIRouter(prefix="/models", tags=["models"])


class VersionSummary(BaseModel):
    version: int
    digest: str = Field(description="sha256 of model.safetensors")
    arch: str | None
    serving: dict[str, Any] = Field(description="precision, channels_last, compile... (docs/http-api.md)")
    created_at: str


class AliasSummary(BaseModel):
    version: int
    moved_by: str
    moved_at: str


class ModelSummary(BaseModel):
    model: str
    latest: int
    versions: list[VersionSummary]
    aliases: dict[str, AliasSummary] = Field(
        description="alias name: the version it points at, who moved it when"
    )


class VersionDetail(VersionSummary):
    model: str
    checkpoint_sha256: str
    spec: dict[str, Any]
    report: dict[str, Any] = Field(description="the equivalence report (see docs/http-api.md)")
    serving: dict[str, Any]
    timings: dict[str, Any]
    artifacts: dict[str, str] = Field(
        description="download URL per artifact stored or being exported (model.onnx, model.pt2)"
    )


def describe(record: VersionRecord, files: list[str]) -> dict[str, Any]:
    base = f"/models/{record.name}/versions/{record.version}"
    return {
        "model": record.name,
        **record.summary(),
        "checkpoint_sha256": record.checkpoint_sha256,
        "spec": record.spec,
        "report": record.report,
        "serving": record.serving,
        "timings": record.timings,
        "artifacts": {name: f"{base}/artifacts/{name}" for name in files},
    }


def _model(name: str, records: list[VersionRecord], aliases: dict[str, AliasRecord]) -> dict[str, Any]:
    return {
        "model": name,
        "latest": records[-1].version,
        "versions": [r.summary() for r in records],
        "aliases": {alias: record.summary() for alias, record in aliases.items()},
    }


@router.get("", summary="Every model with its versions and aliases", response_model=list[ModelSummary])
async def list_models(metadata: MetadataDep) -> list[dict[str, Any]]:
    grouped: dict[str, list[VersionRecord]] = {}
    for record in await asyncio.to_thread(metadata.versions):
        grouped.setdefault(record.name, []).append(record)
    aliases = await asyncio.to_thread(metadata.aliases)
    return [_model(name, records, aliases.get(name, {})) for name, records in grouped.items()]


@router.get(
    "/{name}",
    summary="One model's versions and aliases",
    response_model=ModelSummary,
    responses=responses(404),
)
async def get_model(name: ModelName, metadata: MetadataDep) -> dict[str, Any]:
    records = await asyncio.to_thread(metadata.versions, name)
    if not records:
        raise NotFound(f"no model named {name!r}")
    return _model(name, records, (await asyncio.to_thread(metadata.aliases, name)).get(name, {}))


@router.delete(
    "/{name}",
    status_code=204,
    dependencies=[BEARER],
    summary="Delete a model: its aliases, then every version (unregistered; unshared artifacts go)",
    description="The version numbers stay taken: a later conversion under this name continues them.",
    responses=responses(401, 404, 409, 503),
)
async def delete_model(name: ModelName, conversions: ConversionsDep, actor: ActorDep) -> Response:
    if await conversions.delete_model(name, actor) is None:
        raise NotFound(f"no model named {name!r}")
    return Response(status_code=204)


async def _version(metadata: MetadataDep, name: str, version: int) -> VersionRecord:
    record = await asyncio.to_thread(metadata.get_version, name, version)
    if record is None:
        raise NotFound(f"no version {version} of model {name!r}")
    return record


@router.get(
    "/{name}/versions/{version}",
    summary="A version: spec, equivalence report, timings, artifact links",
    response_model=VersionDetail,
    responses=responses(404),
)
async def get_version(
    name: ModelName,
    version: VersionNumber,
    metadata: MetadataDep,
    artifacts: ArtifactsDep,
    exports: ExportsDep,
) -> dict[str, Any]:
    record = await _version(metadata, name, version)
    folder = await asyncio.to_thread(artifacts.local_path, record.digest)  # S3: listed, fetched
    stored = await asyncio.to_thread(lambda: {f for f in FILES if (folder / f).exists()})
    files = [f for f in FILES if f in stored or exports.pending(record.digest, f)]
    return describe(record, files)


@router.get(
    "/{name}/versions/{version}/artifacts/{filename}",
    dependencies=[BEARER],
    summary="Download an artifact (with the token, unless REPARAM_PUBLIC_DOWNLOADS)",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **responses(401, 404, 503)},
)
async def download(
    name: ModelName,
    version: VersionNumber,
    filename: Annotated[str, Path(description=", ".join(FILES))],
    metadata: MetadataDep,
    artifacts: ArtifactsDep,
    exports: ExportsDep,
) -> FileResponse:
    record = await _version(metadata, name, version)
    if filename not in FILES:
        raise NotFound(f"no artifact {filename!r}; artifacts: {', '.join(FILES)}")
    path = await asyncio.to_thread(artifacts.local_path, record.digest) / filename  # S3: fetched
    if not path.exists():
        if exports.pending(record.digest, filename):
            raise NotReady(f"{filename} of {name} v{version} is being exported (after registration)")
        why = exports.failure(record.digest, filename)
        raise NotFound(f"{filename} was not produced for this version" + (f": {why}" if why else ""))
    return FileResponse(path, filename=f"{name}-v{version}-{filename}")


@router.delete(
    "/{name}/versions/{version}",
    status_code=204,
    dependencies=[BEARER],
    summary="Unregister and delete a version (artifacts go when no version uses them)",
    description="Refused with 409 while an alias points at the version: move or delete the alias first.",
    responses=responses(401, 404, 409, 503),
)
async def delete_version(name: ModelName, version: VersionNumber, conversions: ConversionsDep) -> Response:
    if await conversions.delete(name, version) is None:
        raise NotFound(f"no version {version} of model {name!r}")
    return Response(status_code=204)
