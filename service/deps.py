"""FastAPI dependencies: the app's shared objects, typed (the token is checked by ``auth.TokenGate``).

All ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per
dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Header, Request

from .backends.base import InferenceBackend
from .backends.supervisor import Supervisor
from .config import Settings
from .jobs import Conversions, Exports, JobRunner
from .metrics import Metrics
from .store import ArtifactStore, MetadataStore, VersionCache


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _metadata(request: Request) -> MetadataStore:
    return request.app.state.metadata  # type: ignore[no-any-return]


async def _versions(request: Request) -> VersionCache:
    return request.app.state.versions  # type: ignore[no-any-return]


async def _artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts  # type: ignore[no-any-return]


async def _backend(request: Request) -> InferenceBackend:
    return request.app.state.backend  # type: ignore[no-any-return]


async def _supervisor(request: Request) -> Supervisor:
    return request.app.state.supervisor  # type: ignore[no-any-return]


async def _exports(request: Request) -> Exports:
    exports: Exports = request.app.state.exports
    return exports


async def _conversions(request: Request) -> Conversions:
    return request.app.state.conversions  # type: ignore[no-any-return]


async def _job_runner(request: Request) -> JobRunner:
    return request.app.state.job_runner  # type: ignore[no-any-return]


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def _actor(
    request: Request,
    x_reparam_actor: Annotated[
        str | None,
        Header(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$",
            description="who makes this change, as the caller says: recorded next to the token's fingerprint",
        ),
    ] = None,
) -> str:
    """Who a change is recorded as: ``token:`` and the first 8 hex digits of the token's sha256 (the
    token TokenGate checked) when a token is set, else ``anonymous``; an ``X-Reparam-Actor`` header
    is the caller's own word, so it is recorded next to that, never instead: ``ci (token:1a2b3c4d)``."""
    token = request.app.state.settings.api_token
    verified = f"token:{hashlib.sha256(token.encode()).hexdigest()[:8]}" if token else "anonymous"
    return f"{x_reparam_actor} ({verified})" if x_reparam_actor else verified


SettingsDep = Annotated[Settings, Depends(_settings)]
MetadataDep = Annotated[MetadataStore, Depends(_metadata)]
VersionsDep = Annotated[VersionCache, Depends(_versions)]
ArtifactsDep = Annotated[ArtifactStore, Depends(_artifacts)]
BackendDep = Annotated[InferenceBackend, Depends(_backend)]
SupervisorDep = Annotated[Supervisor, Depends(_supervisor)]
ConversionsDep = Annotated[Conversions, Depends(_conversions)]
ExportsDep = Annotated[Exports, Depends(_exports)]
JobRunnerDep = Annotated[JobRunner, Depends(_job_runner)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
ActorDep = Annotated[str, Depends(_actor)]
