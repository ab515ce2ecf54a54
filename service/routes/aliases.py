"""Aliases of a model (``production``, ``staging``, ``default``...): set or move, delete, history.

Who moved an alias and when is recorded with every move (``deps.ActorDep``). ``/predict`` takes an
alias for ``version``; the ``default`` alias, when set, is the version served when none is asked for.
The version an alias moves to keeps its workers loaded (``backends.worker_policy``): they start at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ..auth import BEARER
from ..deps import ActorDep, BackendDep, MetadataDep, VersionsDep
from ..errors import NotFound, responses
from .params import MAX_VERSION, AliasName, ModelName

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])
log = logging.getLogger("reparam.aliases")


class AliasTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_VERSION, description="an existing version of the model")


class AliasState(BaseModel):
    version: int
    moved_by: str = Field(
        description="token:<sha256 prefix of the token> (anonymous without one), after the "
        "X-Reparam-Actor header's name when sent: 'ci (token:1a2b3c4d)'"
    )
    moved_at: str


class AliasMoved(AliasState):
    model: str
    alias: str
    previous: int | None = Field(description="the version it pointed at before (null: it is new)")


class AliasMoveEntry(BaseModel):
    from_: int | None = Field(alias="from", description="null: the alias was set")
    to: int | None = Field(description="null: the alias was removed")
    moved_by: str
    moved_at: str


@router.put(
    "/{alias}",
    dependencies=[BEARER],
    summary="Point an alias at a version (set or move it)",
    response_model=AliasMoved,
    responses=responses(401, 404),
)
async def set_alias(
    name: ModelName,
    alias: AliasName,
    target: AliasTarget,
    metadata: MetadataDep,
    versions: VersionsDep,
    backend: BackendDep,
    actor: ActorDep,
) -> dict[str, Any]:
    record = await asyncio.to_thread(metadata.get_version, name, target.version)
    if record is None or versions.retired(record):
        raise NotFound(f"no version {target.version} of model {name!r}")
    moved = await asyncio.to_thread(metadata.set_alias, name, alias, target.version, actor)
    if moved is None:
        raise NotFound(f"no version {target.version} of model {name!r}")
    versions.forget(name)
    backend.prewarm(
        name, target.version
    )  # an unloaded version loads its workers now, not at its first request
    state, previous = moved
    before = f"v{previous}" if previous is not None else "(new)"
    log.info("alias %s of %s: %s -> v%d (by %s)", alias, name, before, target.version, actor)
    return {"model": name, "alias": alias, "previous": previous, **state.summary()}


@router.delete(
    "/{alias}",
    status_code=204,
    dependencies=[BEARER],
    summary="Remove an alias (its history stays)",
    responses=responses(401, 404),
)
async def delete_alias(
    name: ModelName, alias: AliasName, metadata: MetadataDep, versions: VersionsDep, actor: ActorDep
) -> Response:
    if await asyncio.to_thread(metadata.delete_alias, name, alias, actor) is None:
        raise NotFound(f"no alias {alias!r} of model {name!r}")
    versions.forget(name)
    log.info("alias %s of %s removed (by %s)", alias, name, actor)
    return Response(status_code=204)


@router.get(
    "/{alias}/history",
    summary="Every move of an alias, oldest first: from, to, who, when",
    response_model=list[AliasMoveEntry],
    responses=responses(404),
)
async def alias_history(name: ModelName, alias: AliasName, metadata: MetadataDep) -> list[dict[str, Any]]:
    moves = await asyncio.to_thread(metadata.alias_history, name, alias)
    if not moves:
        raise NotFound(f"alias {alias!r} of model {name!r} was never set")
    return [move.summary() for move in moves]
