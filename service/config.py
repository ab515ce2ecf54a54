"""Settings from the environment (prefix ``REPARAM_``), read once per process behind ``get_settings``."""

from __future__ import annotations

import os
import secrets
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPARAM_", env_file=None, extra="ignore")

    host: str = Field(default="127.0.0.1", description="address the service listens on")
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per log line (time, level, logger, message)"
    )
    port: int = Field(default=8000, description="port the service listens on")
    data_dir: Path = Field(default=Path("data"), description="database, artifacts and model store")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. `postgresql+psycopg://user:password@host/db`; default SQLite "
        "in data_dir",
    )
    migrate_at_start: bool = Field(
        default=True,
        description="bring the database schema to this release's at start (Alembic); false: refuse to "
        "start on an older schema until `reparam db upgrade` has run",
    )
    artifacts_dir: Path | None = Field(
        default=None, description="default data_dir/artifacts (with artifacts_url: the bucket's local cache)"
    )
    artifacts_url: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^?#]*)?$",
        description="s3://bucket/prefix: artifacts in S3-compatible storage (endpoint and credentials "
        "from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION); default "
        "the artifacts_dir folder",
    )
    api_token: str | None = Field(
        default=None, description="Bearer token required on mutating endpoints, downloads and jobs"
    )
    public_downloads: bool = Field(
        default=False, description="with a token set: artifact downloads and job details readable by anyone"
    )
    max_upload_bytes: int = Field(default=2 << 30, description="largest POST /convert body")
    max_predict_bytes: int = Field(default=16 << 20, description="largest /predict body")
    jpeg_draft: bool = Field(
        default=False,
        description="/predict decodes a JPEG at least twice the resize at 1/2, 1/4 or 1/8 scale (libjpeg): "
        "faster, but its pixels are not exactly torchvision's (docs/performance.md)",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection's request headers must be complete within this"
    )
    body_idle_timeout_s: float = Field(default=15.0, gt=0, description="a request body may stall this long")
    body_min_bytes_per_s: float = Field(
        default=16384, ge=0, description="slowest average body pace accepted once body_grace_s have passed"
    )
    body_grace_s: float = Field(default=10.0, ge=0, description="time before body_min_bytes_per_s applies")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where conversions and in-process inference run"
    )
    default_tolerance: float = Field(
        default=1e-9, gt=0, le=1e-3, description="fp64 gate tolerance when a request sets none"
    )
    max_conversion_gmacs: float = Field(
        default=50.0, gt=0, description="largest deploy net converted, in GMACs at the spec's input_size"
    )
    max_conversion_params: int = Field(
        default=300_000_000, gt=0, description="largest deploy net converted, in parameters"
    )
    conversion_workers: int = Field(default=1, ge=1, description="conversions run at the same time")
    replica_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$",
        description="this replica's name on the conversion jobs it claims; default hostname-pid-random",
    )
    job_poll_s: float = Field(
        default=1.0, gt=0, description="how often a replica with a free conversion slot looks for queued jobs"
    )
    job_heartbeat_s: float = Field(
        default=5.0, gt=0, description="how often a replica renews the lease of each job it runs"
    )
    job_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="a running job whose replica has not renewed it for this long is taken over by "
        "another replica (docs/operations.md: sizing it)",
    )
    job_max_attempts: int = Field(
        default=2, ge=1, description="replicas that may start one job before it fails (theirs stopped)"
    )
    export_program: bool = Field(
        default=True,
        description="write model.pt2 (torch.export) per version, in the background after registering",
    )

    backend: Literal["auto", "torchserve", "inprocess"] = Field(
        default="auto", description="auto: TorchServe when Java and torchserve are found, else in-process"
    )
    torchserve_url: str | None = Field(default=None, description="external TorchServe inference URL")
    torchserve_management_url: str | None = Field(
        default=None, description="external TorchServe management URL"
    )
    torchserve_model_store: Path | None = Field(default=None, description="default data_dir/model-store")
    torchserve_inference_port: int = Field(default=8080, description="managed TorchServe, on 127.0.0.1")
    torchserve_management_port: int = Field(default=8081, description="managed TorchServe, on 127.0.0.1")
    torchserve_metrics_port: int = Field(default=8082, description="managed TorchServe, on 127.0.0.1")
    torchserve_grpc_inference_port: int = Field(
        default=0,
        ge=0,
        description="managed TorchServe's gRPC inference port, on 127.0.0.1 (0: any free port)",
    )
    torchserve_grpc_management_port: int = Field(
        default=0,
        ge=0,
        description="managed TorchServe's gRPC management port, on 127.0.0.1 (0: any free port)",
    )
    torchserve_start_timeout_s: float = Field(default=180.0, description="waiting for TorchServe to answer")
    supervise_interval_s: float = Field(
        default=2.0, gt=0, description="how often the backend and every version's registration are checked"
    )
    supervise_max_restarts: int = Field(
        default=5,
        ge=1,
        description="failed TorchServe restarts in a row before the service gives up and exits",
    )
    registration_concurrency: int = Field(
        default=2, ge=1, description="stored versions registered with the backend at the same time"
    )
    batch_size: int = Field(default=8, ge=1, description="largest batch a backend runs")
    max_batch_delay_ms: int = Field(default=5, ge=0, description="TorchServe's wait to fill a batch")
    workers_per_model: int | None = Field(
        default=None,
        ge=1,
        description="TorchServe workers per version; default 1 on a GPU, else min(cores, 4)",
    )
    warm_versions: Literal["aliased_and_latest", "all"] = Field(
        default="aliased_and_latest",
        description="TorchServe versions that keep workers_per_model workers loaded: the latest of each "
        "model and the aliased ones, or all; the others get cold_workers (docs/operations.md)",
    )
    cold_workers: int = Field(
        default=0,
        ge=0,
        description="TorchServe workers of a version kept neither warm nor in use (0: unloaded; its next "
        "request starts workers_per_model workers first)",
    )
    idle_unload_s: float = Field(
        default=600.0,
        gt=0,
        description="a version no longer warm, or scaled up by a request, goes back to cold_workers after "
        "this long without a request",
    )
    worker_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads per managed TorchServe worker; default cores // workers",
    )
    version_cache_s: float = Field(
        default=2.0, ge=0, description="how long /predict trusts a looked-up version (0: always query)"
    )
    model_startup_timeout_s: int = Field(
        default=600, ge=1, description="loading, compiling and warming up one version (TorchServe worker)"
    )

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Settings:
        if self.job_lease_s <= 2 * self.job_heartbeat_s:
            raise ValueError(
                f"job_lease_s ({self.job_lease_s:g}) must be more than twice job_heartbeat_s "
                f"({self.job_heartbeat_s:g}): one late heartbeat must not lose a running job"
            )
        return self

    @property
    def resolved_replica_id(self) -> str:
        return self.replica_id or _process_id(os.getpid())

    @property
    def resolved_workers(self) -> int:
        """One worker per core (up to 4) on the CPU: single-threaded workers side by side keep
        both cores busy where one two-threaded worker stalls whenever the service takes a core."""
        if self.workers_per_model is not None:
            return self.workers_per_model
        on_gpu = self.device != "cpu" and torch.cuda.is_available()
        return 1 if on_gpu else min(_cores(), 4)

    @property
    def resolved_worker_threads(self) -> int:
        return self.worker_threads or max(1, _cores() // self.resolved_workers)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'reparam.db').resolve()}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def resolved_model_store(self) -> Path:
        return (self.torchserve_model_store or self.data_dir / "model-store").resolve()


@lru_cache
def _process_id(pid: int) -> str:
    """This process's replica name: host, pid and a random part (pids repeat across restarts)."""
    return f"{socket.gethostname()[:64]}-{pid}-{secrets.token_hex(4)}"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_table() -> str:
    """The configuration table of docs/operations.md, generated from :class:`Settings`."""
    rows = ["| variable | default | what |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f"`{field.default}`"
        rows.append(f"| `REPARAM_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)
