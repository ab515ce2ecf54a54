"""The versioned registry: list, describe, download, delete."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from ..auth import BEARER
from ..deps import ArtifactsDep, ConversionsDep, MetadataDep
from ..errors import NotFound
from ..store import VersionRecord
from ..store.artifacts import FILES

router = APIRouter(prefix="/models", tags=["models"])


def describe(record: VersionRecord) -> dict[str, Any]:
    base = f"/models/{record.name}/versions/{record.version}"
    return {
        "model": record.name,
        **record.summary(),
        "checkpoint_sha256": record.checkpoint_sha256,
        "spec": record.spec,
        "report": record.report,
        "serving": record.serving,
        "timings": record.timings,
        "artifacts": {name: f"{base}/artifacts/{name}" for name in FILES},
    }


@router.get("", summary="Every model with its versions")
async def list_models(metadata: MetadataDep) -> list[dict[str, Any]]:
    grouped: dict[str, list[VersionRecord]] = {}
    for record in await asyncio.to_thread(metadata.versions):
        grouped.setdefault(record.name, []).append(record)
    return [
        {"model": name, "latest": records[-1].version, "versions": [r.summary() for r in records]}
        for name, records in grouped.items()
    ]


@router.get("/{name}", summary="One model's versions")
async def get_model(name: str, metadata: MetadataDep) -> dict[str, Any]:
    records = await asyncio.to_thread(metadata.versions, name)
    if not records:
        raise NotFound(f"no model named {name!r}")
    return {"model": name, "latest": records[-1].version, "versions": [r.summary() for r in records]}


async def _version(metadata: MetadataDep, name: str, version: int) -> VersionRecord:
    record = await asyncio.to_thread(metadata.get_version, name, version)
    if record is None:
        raise NotFound(f"no version {version} of model {name!r}")
    return record


@router.get(
    "/{name}/versions/{version}", summary="A version: spec, equivalence report, timings, artifact links"
)
async def get_version(name: str, version: int, metadata: MetadataDep) -> dict[str, Any]:
    return describe(await _version(metadata, name, version))


@router.get(
    "/{name}/versions/{version}/artifacts/{filename}",
    dependencies=[BEARER],
    summary="Download an artifact (with the token, unless REPARAM_PUBLIC_DOWNLOADS)",
)
async def download(
    name: str, version: int, filename: str, metadata: MetadataDep, artifacts: ArtifactsDep
) -> FileResponse:
    record = await _version(metadata, name, version)
    if filename not in FILES:
        raise NotFound(f"no artifact {filename!r}; artifacts: {', '.join(FILES)}")
    path = artifacts.local_path(record.digest) / filename
    if not path.exists():
        raise NotFound(f"{filename} was not produced for this version")
    return FileResponse(path, filename=f"{name}-v{version}-{filename}")


@router.delete(
    "/{name}/versions/{version}",
    status_code=204,
    dependencies=[BEARER],
    summary="Unregister and delete a version (artifacts go when no version uses them)",
)
async def delete_version(name: str, version: int, conversions: ConversionsDep) -> Response:
    if await conversions.delete(name, version) is None:
        raise NotFound(f"no version {version} of model {name!r}")
    return Response(status_code=204)
