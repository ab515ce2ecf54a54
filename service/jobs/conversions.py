"""Run a conversion (GPU when present) in a worker thread, store it, register it with the backend.

Order matters for "nothing half-written": the artifacts are written atomically first, the version
row is inserted next, the backend registration last; if registration fails the row and unshared
artifacts are removed again. A failed gate stores nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reparam_core import ArchSpec, EquivalenceError, ReparamError, ServingOptions, Weights, convert

from ..backends.base import InferenceBackend
from ..config import Settings
from ..metrics import Metrics
from ..store import ArtifactStore, MetadataStore, VersionCache, VersionRecord

log = logging.getLogger("reparam.jobs")


@dataclass(frozen=True)
class Upload:
    """A checkpoint streamed to disk by the route, with its sha256."""

    path: Path
    sha256: str
    size: int
    filename: str


@dataclass(frozen=True)
class ConversionRequest:
    """What to convert, which of its weights, what to prove it against, and how to serve it."""

    name: str
    spec: ArchSpec
    upload: Upload
    tolerance: float
    serving: ServingOptions
    weights: Weights = "auto"
    reference: Upload | None = None

    def digest(self) -> str:
        """What makes two conversions of the same checkpoint the same: spec, weights, reference."""
        canonical = json.dumps(
            {
                "spec": self.spec.model_dump(mode="json"),
                "weights": self.weights,
                "reference": self.reference.sha256 if self.reference else None,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ConversionOutcome:
    record: VersionRecord
    created: bool


class Conversions:
    def __init__(
        self,
        settings: Settings,
        metadata: MetadataStore,
        versions: VersionCache,
        artifacts: ArtifactStore,
        backend: InferenceBackend,
        metrics: Metrics,
    ) -> None:
        self.settings, self.metadata, self.versions, self.artifacts = settings, metadata, versions, artifacts
        self.backend, self.metrics = backend, metrics
        self.executor = ThreadPoolExecutor(
            max_workers=settings.conversion_workers, thread_name_prefix="convert"
        )
        self.tasks: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, request: ConversionRequest) -> ConversionOutcome:
        """Convert (or reuse an identical earlier conversion), store, register; raises on bad input."""
        name, upload = request.name, request.upload
        spec_sha = request.digest()
        serving = request.serving.model_dump(mode="json")
        existing = await asyncio.to_thread(
            self.metadata.find_duplicate, name, upload.sha256, spec_sha, serving
        )
        if existing is not None:
            return ConversionOutcome(existing, created=False)
        loop = asyncio.get_running_loop()
        try:
            digest, report, timings = await loop.run_in_executor(
                self.executor, self._convert_and_store, request
            )
        except EquivalenceError:
            self.metrics.conversions.labels("gate_failed").inc()
            raise
        except ReparamError:
            self.metrics.conversions.labels("bad_input").inc()
            raise
        record = await asyncio.to_thread(
            self.metadata.add_version,
            name,
            digest,
            upload.sha256,
            spec_sha,
            request.spec.model_dump(mode="json"),
            report,
            timings,
            serving,
        )
        try:
            await self.backend.register(
                name, record.version, self.artifacts.local_path(digest), request.serving
            )
        except Exception:
            await asyncio.to_thread(self._forget, record)
            self.metrics.conversions.labels("backend_failed").inc()
            raise
        self.versions.forget(name)
        self.metrics.conversions.labels("stored").inc()
        self.metrics.models_registered.inc()
        return ConversionOutcome(record, created=True)

    def _convert_and_store(self, request: ConversionRequest) -> tuple[str, dict, dict]:
        result = convert(
            request.spec,
            request.upload.path,
            device=self.settings.device,
            tolerance=request.tolerance,
            checkpoint_name=request.upload.filename,
            serving=request.serving,
            weights=request.weights,
            reference=request.reference.path if request.reference else None,
        )
        for stage, seconds in result.timings.items():
            self.metrics.conversion_duration.labels(stage).observe(seconds)
        digest = self.artifacts.put(result, export=self.settings.export_program)
        return digest, result.report.model_dump(mode="json"), result.timings

    def _forget(self, record: VersionRecord) -> None:
        self.metadata.delete_version(record.name, record.version)
        if not self.metadata.digest_in_use(record.digest):
            self.artifacts.delete(record.digest)

    async def delete(self, name: str, version: int) -> VersionRecord | None:
        """Retire the version first (its requests get 404 from now on, the supervisor leaves it
        alone), then unregister it (requests under way are answered at once), then drop its row."""
        record = await asyncio.to_thread(self.metadata.get_version, name, version)
        if record is None or self.versions.retired(record):
            return None
        self.versions.retire(record)
        try:
            await self.backend.unregister(name, version)
        except BaseException:
            self.versions.reinstate(record)
            raise
        await asyncio.to_thread(self._forget, record)
        self.versions.forget(name)
        self.metrics.models_registered.dec()
        return record

    async def start_job(self, request: ConversionRequest) -> str:
        """Queue a conversion and return its job id at once (the caller polls ``/jobs/{id}``)."""
        name = request.name
        job = await asyncio.to_thread(self.metadata.create_job, name)

        async def record(status: str, result: dict[str, Any] | None = None) -> None:
            await asyncio.to_thread(self.metadata.update_job, job.id, status, result)

        async def work() -> None:
            await record("running")
            try:
                outcome = await self.run(request)
                result: dict[str, Any] = {
                    "model": name,
                    "version": outcome.record.version,
                    "digest": outcome.record.digest,
                    "created": outcome.created,
                }
                await record("succeeded", result)
            except EquivalenceError as exc:
                report = exc.report.model_dump(mode="json") if exc.report is not None else None
                await record("failed", {"status": 422, "detail": str(exc), "report": report})
            except ReparamError as exc:
                await record("failed", {"status": 400, "detail": str(exc)})
            except Exception as exc:  # recorded for the poller; the service keeps running
                log.exception("conversion job %s failed", job.id)
                await record("failed", {"status": 500, "detail": f"{type(exc).__name__}: {exc}"})
            finally:
                shutil.rmtree(request.upload.path.parent, ignore_errors=True)

        task = asyncio.get_running_loop().create_task(work())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return job.id
