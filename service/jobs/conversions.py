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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reparam_core import (
    ArchSpec,
    ConversionResult,
    EquivalenceError,
    ReparamError,
    ServingOptions,
    Weights,
    convert,
)
from reparam_core.deploy import ONNX_INT8, sha256_file

from ..backends.base import InferenceBackend
from ..config import Settings
from ..errors import Conflict
from ..metrics import Metrics
from ..store import ArtifactStore, MetadataStore, VersionCache, VersionRecord
from .exports import Exports

log = logging.getLogger("reparam.jobs")
Progress = Callable[[str], None]  # called (from any thread) with each stage's name as it starts
# a conversion's stages in order: the library's (with serving options), then the service's
STAGES = (
    "parse",
    "read",
    "build",
    "fuse",
    "assemble",
    "onnx",
    "quantization",
    "int8",
    "validate",
    "serving",
    "store",
    "register",
)
JOINED = "joined"  # the stage of a job that waits for an identical conversion already under way


@dataclass(frozen=True)
class Upload:
    """A checkpoint streamed to disk by the route, with its sha256."""

    path: Path
    sha256: str
    size: int
    filename: str
    seconds: float = 0.0  # copying and hashing it

    def to_json(self) -> dict[str, Any]:
        """What a queued job keeps of it (the file itself is stored apart, as ``stored_as``)."""
        return {
            "stored_as": self.path.name,
            "sha256": self.sha256,
            "size": self.size,
            "filename": self.filename,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path) -> Upload:
        return cls(
            folder / data["stored_as"], data["sha256"], data["size"], data["filename"], data["seconds"]
        )


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
    new_architecture: bool = False
    calibration: Upload | None = None  # the calibration images, decoded and saved as inputs

    def digest(self) -> str:
        """What makes two conversions of the same checkpoint the same: spec, weights, reference and
        calibration images."""
        canonical = json.dumps(
            {
                "spec": self.spec.model_dump(mode="json"),
                "weights": self.weights,
                "reference": self.reference.sha256 if self.reference else None,
            }
            | ({"calibration": self.calibration.sha256} if self.calibration else {}),
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The request as a queued job carries it; its files are in one folder, stored apart."""
        files = {"checkpoint": self.upload, "reference": self.reference, "calibration": self.calibration}
        return {
            "name": self.name,
            "spec": self.spec.model_dump(mode="json"),
            "tolerance": self.tolerance,
            "serving": self.serving.model_dump(mode="json"),
            "weights": self.weights,
            "new_architecture": self.new_architecture,
            "inputs": {part: upload.to_json() for part, upload in files.items() if upload is not None},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path) -> ConversionRequest:
        """The request of a queued job whose input files are in ``folder``."""
        inputs = {part: Upload.from_json(upload, folder) for part, upload in data["inputs"].items()}
        return cls(
            data["name"],
            ArchSpec.model_validate(data["spec"]),
            inputs["checkpoint"],
            data["tolerance"],
            ServingOptions.model_validate(data["serving"]),
            data["weights"],
            inputs.get("reference"),
            data["new_architecture"],
            inputs.get("calibration"),
        )


def _discard(upload: Upload) -> None:
    """Remove an upload's folder (the route makes one per request: checkpoint and reference)."""
    shutil.rmtree(upload.path.parent, ignore_errors=True)


def architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """What of a stored spec is the net itself: not its labels, preprocessing or gate input size."""
    return {k: v for k, v in spec.items() if k not in ("labels", "preprocess", "input_size")}


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
        exports: Exports,
    ) -> None:
        self.settings, self.metadata, self.versions, self.artifacts = settings, metadata, versions, artifacts
        self.backend, self.metrics, self.exports = backend, metrics, exports
        self.executor = ThreadPoolExecutor(
            max_workers=settings.conversion_workers, thread_name_prefix="convert"
        )
        self._in_flight: dict[tuple[str, str, str, str], asyncio.Future[ConversionOutcome]] = {}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, request: ConversionRequest, progress: Progress | None = None) -> ConversionOutcome:
        """Convert (or reuse an identical earlier conversion), store, register; raises on bad input.
        The request's upload folder is handed over: it is removed once the conversion is done.

        Identical requests in flight at once share one conversion (the database would also refuse a
        second identical version, across replicas). ``progress`` hears the library's stages, then
        ``store`` and ``register`` (``joined`` when the request waits for an identical one)."""
        key = (request.name, request.upload.sha256, request.digest(), request.serving.model_dump_json())
        running = self._in_flight.get(key)
        if running is not None:  # joined: the version is the one that request creates
            await asyncio.to_thread(_discard, request.upload)
            if progress is not None:
                await asyncio.to_thread(progress, JOINED)
            return ConversionOutcome((await asyncio.shield(running)).record, created=False)
        running = asyncio.ensure_future(self._run_and_discard(request, progress))
        self._in_flight[key] = running
        running.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(running)

    async def _run_and_discard(
        self, request: ConversionRequest, progress: Progress | None
    ) -> ConversionOutcome:
        try:
            return await self._run(request, progress or (lambda stage: None))
        finally:
            await asyncio.to_thread(_discard, request.upload)

    async def _run(self, request: ConversionRequest, progress: Progress) -> ConversionOutcome:
        name, upload = request.name, request.upload
        spec_sha = request.digest()
        serving = request.serving.model_dump(mode="json")
        existing = await asyncio.to_thread(
            self.metadata.find_duplicate, name, upload.sha256, spec_sha, serving
        )
        if existing is not None:
            return ConversionOutcome(existing, created=False)
        await self._check_architecture(request)
        loop = asyncio.get_running_loop()
        try:
            result, digest, timings = await loop.run_in_executor(
                self.executor, self._convert_and_store, request, progress
            )
        except EquivalenceError as exc:
            self.metrics.conversions.labels("gate_failed").inc()
            log.warning("conversion of %s (%s) failed the gate: %s", name, upload.filename, exc)
            raise
        except ReparamError as exc:
            self.metrics.conversions.labels("bad_input").inc()
            log.warning("conversion of %s (%s) refused: %s", name, upload.filename, exc)
            raise
        self.versions.claim(name, digest)  # the supervisor must not register it meanwhile
        try:
            outcome = await self._store_and_register(
                request, digest, result.report.model_dump(mode="json"), timings, progress
            )
        finally:
            self.versions.release(name, digest)
        if outcome.created:  # model.onnx (runtime torch), model.pt2: off the request path
            await asyncio.to_thread(self.exports.schedule, outcome.record)  # S3: listed
        return outcome

    async def _store_and_register(
        self,
        request: ConversionRequest,
        digest: str,
        report: dict[str, Any],
        timings: dict[str, float],
        progress: Progress,
    ) -> ConversionOutcome:
        """The version row, then its registration (the row removed again if that fails)."""
        name, spec_sha, serving = request.name, request.digest(), request.serving.model_dump(mode="json")
        record, created = await asyncio.to_thread(
            self.metadata.add_version,
            name,
            digest,
            request.upload.sha256,
            spec_sha,
            request.spec.model_dump(mode="json"),
            report,
            timings,
            serving,
        )
        if not created:  # another replica stored the same conversion meanwhile
            return ConversionOutcome(record, created=False)
        await asyncio.to_thread(progress, "register")
        try:
            path = await asyncio.to_thread(self.artifacts.local_path, digest)
            steps = await self.backend.register(name, record.version, path, request.serving)
        except Exception as exc:
            await asyncio.to_thread(self._forget, record)
            self.metrics.conversions.labels("backend_failed").inc()
            log.error("%s v%d converted but not registered (%s): removed again", name, record.version, exc)
            raise
        timings = {**timings, **steps}  # archive (TorchServe), register
        record = await asyncio.to_thread(self.metadata.set_timings, record, timings)
        for stage, seconds in timings.items():
            self.metrics.conversion_duration.labels(stage).observe(seconds)
        self.versions.forget(name)
        self.metrics.conversions.labels("stored").inc()
        self.metrics.models_registered.inc()
        worst = max((check.get("max_rel_error", 0.0) for check in report.get("fp64", [])), default=0.0)
        log.info(
            "converted %s v%d (%s, %s): fp64 max relative error %.1e, stages %s",
            name,
            record.version,
            report.get("arch"),
            record.digest[:12],
            worst,
            ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items()),
        )
        return ConversionOutcome(record, created=True)

    async def _check_architecture(self, request: ConversionRequest) -> None:
        """A model name holds one architecture: another one under it is refused (409) unless the
        request says it is meant (``new_architecture``)."""
        if request.new_architecture:
            return
        latest = await asyncio.to_thread(self.metadata.get_version, request.name)
        if latest is None:
            return
        before, now = architecture(latest.spec), architecture(request.spec.model_dump(mode="json"))
        if before != now:
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            arch = latest.report.get("arch", "different net")
            raise Conflict(
                f"model {request.name!r} v{latest.version} is a {arch}; "
                f"this spec differs in {', '.join(changed)}. Use another name, or send "
                "new_architecture=true to make it the next version anyway"
            )

    def _convert_and_store(
        self, request: ConversionRequest, progress: Progress
    ) -> tuple[ConversionResult, str, dict[str, float]]:
        result = convert(
            request.spec,
            request.upload.path,
            device=self.settings.device,
            tolerance=request.tolerance,
            checkpoint_name=request.upload.filename,
            serving=request.serving,
            weights=request.weights,
            reference=request.reference.path if request.reference else None,
            calibration=request.calibration.path if request.calibration else None,
            progress=progress,
        )
        progress("store")
        started = time.perf_counter()
        digest = self.artifacts.put(result, export=False)  # model.pt2 comes after registration
        if result.onnx_int8 is not None:
            self._check_int8_file(digest, result.onnx_int8)
        uploads = (request.upload, request.reference, request.calibration)
        saved = sum(upload.seconds for upload in uploads if upload is not None)
        timings = {"save": saved, **result.timings, "store": time.perf_counter() - started}
        return result, digest, timings

    def _check_int8_file(self, digest: str, onnx_int8: bytes) -> None:
        """Versions of the same weights share one artifact folder, so one ``model.int8.onnx``: a
        quantization of them from other calibration inputs or other ``int8_float_layers`` is refused
        (409), not served in its place."""
        stored = self.artifacts.local_path(digest) / ONNX_INT8
        if sha256_file(stored) != hashlib.sha256(onnx_int8).hexdigest():
            raise Conflict(
                "these weights were quantized to int8 before, on other calibration inputs or with other "
                "int8_float_layers: an earlier version serves that model.int8.onnx. Convert with the same "
                "calibration images (or reference) and int8 options as before, or serve this one in "
                "another precision"
            )

    def _forget(self, record: VersionRecord) -> None:
        self.metadata.delete_version(record.name, record.version)
        if not self.metadata.digest_in_use(record.digest):
            self.artifacts.delete(record.digest)

    async def delete(self, name: str, version: int) -> VersionRecord | None:
        """Retire the version first (its requests get 404 from now on, the supervisor leaves it
        alone, no alias can be pointed at it), refuse (409) while an alias points at it, then
        unregister it (requests under way are answered at once), then drop its row."""
        record = await asyncio.to_thread(self.metadata.get_version, name, version)
        if record is None or self.versions.retired(record):
            return None
        self.versions.retire(record)
        try:
            aliases = await asyncio.to_thread(self.metadata.aliases, name)
            pointing = sorted(a for a, target in aliases.get(name, {}).items() if target.version == version)
            if pointing:
                raise Conflict(
                    f"version {version} of model {name!r} is where alias {', '.join(pointing)} points: "
                    "move or delete the alias first"
                )
            await self.backend.unregister(name, version)
        except BaseException:
            self.versions.reinstate(record)
            raise
        await asyncio.to_thread(self._forget, record)
        self.versions.settle(record)
        self.versions.forget(name)
        self.metrics.models_registered.dec()
        log.info("deleted %s v%d", name, version)
        return record

    async def delete_model(self, name: str, who: str) -> list[VersionRecord] | None:
        """Remove the model's aliases, then delete its versions one by one (a failure leaves the rest:
        the request can be repeated). None when it has no versions."""
        records = [
            r for r in await asyncio.to_thread(self.metadata.versions, name) if not self.versions.retired(r)
        ]
        if not records:
            return None
        await asyncio.to_thread(self.metadata.drop_aliases, name, who)
        self.versions.forget(name)
        return [record for record in records if await self.delete(name, record.version) is not None]
