"""Artifacts written after a version is registered, off the request path: ``model.onnx`` (unless the
conversion already made it, as it does for the ONNX runtimes, which serve it) and ``model.pt2`` (a
``torch.export`` program; ``REPARAM_EXPORT_PROGRAM``). Each takes longer than the rest of storing
(seconds for RepVGG-B1, tens under load), and neither the gate nor a torch worker needs them.

One version at a time, in its own thread. ``model.onnx`` is checked in ONNX Runtime against the
stored net run in float64 before it is kept. Each file appears in the version's artifact folder
whole or not at all; until then a download answers 503 with ``Retry-After``, after a failure 404
with the reason. Versions stored without them (the process stopped first) get theirs after the
next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reparam_core import check_onnx_export
from reparam_core.deploy import (
    ONNX,
    PROGRAM,
    DeploySpec,
    PlainNet,
    export_onnx,
    export_program,
    load_artifacts,
)

from ..config import Settings
from ..metrics import Metrics
from ..store import ArtifactStore, MetadataStore, VersionRecord

log = logging.getLogger("reparam.exports")
STAGES = {ONNX: "export_onnx", PROGRAM: "export_program"}  # their label in /metrics


class Exports:
    def __init__(
        self, settings: Settings, metadata: MetadataStore, artifacts: ArtifactStore, metrics: Metrics
    ) -> None:
        self.settings, self.metadata, self.artifacts, self.metrics = settings, metadata, artifacts, metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export")
        self._pending: set[str] = set()  # digests queued or being exported
        self._failed: dict[tuple[str, str], str] = {}  # (digest, file): why (this process's attempts)

    @property
    def files(self) -> tuple[str, ...]:
        return (ONNX, PROGRAM) if self.settings.export_program else (ONNX,)

    def close(self) -> None:
        """Drop the queued exports, wait for the one under way (its file is kept or not at all)."""
        self.executor.shutdown(wait=True, cancel_futures=True)

    def pending(self, digest: str, filename: str) -> bool:
        return filename in self.files and digest in self._pending

    def failure(self, digest: str, filename: str) -> str | None:
        return self._failed.get((digest, filename))

    def missing(self, digest: str) -> list[str]:
        folder = self.artifacts.local_path(digest)
        return [name for name in self.files if not (folder / name).exists()]

    def schedule(
        self, record: VersionRecord, model: PlainNet | None = None, spec: DeploySpec | None = None
    ) -> None:
        """Write what ``record``'s folder lacks, from its net (given, or loaded from its artifacts)."""
        digest = record.digest
        if digest in self._pending or not self.missing(digest):
            return
        self._pending.add(digest)
        future = self.executor.submit(self._export_all, record, model, spec)
        future.add_done_callback(lambda _: self._pending.discard(digest))

    async def resume(self) -> int:
        """Schedule the exports a stopped process left undone; returns for how many versions."""
        return await asyncio.to_thread(self._resume)

    def _resume(self) -> int:
        missing = [r for r in self.metadata.versions() if self.missing(r.digest)]
        for record in missing:
            self.schedule(record)
        return len(missing)

    def _export_all(self, record: VersionRecord, model: PlainNet | None, spec: DeploySpec | None) -> None:
        try:
            if model is None or spec is None:
                model, spec = load_artifacts(self.artifacts.local_path(record.digest))
        except Exception as exc:  # the version serves regardless
            for name in self.missing(record.digest):
                self._fail(record, name, f"its artifacts could not be read: {exc}")
            return
        net, shape = model, (2, *spec.sample_shape())
        writers: dict[str, Callable[[Path], object]] = {
            ONNX: lambda path: path.write_bytes(_checked_onnx(net, spec)),
            PROGRAM: lambda path: export_program(net, shape, path),
        }
        for name in self.missing(record.digest):
            started = time.perf_counter()
            try:
                written = self.artifacts.add(record.digest, name, writers[name])
            except Exception as exc:  # logged and answered on download
                self._fail(record, name, str(exc))
                continue
            seconds = time.perf_counter() - started
            if not written:  # the version was deleted meanwhile
                return
            self.metrics.conversion_duration.labels(STAGES[name]).observe(seconds)
            log.info("%s v%d: %s exported in %.2f s", record.name, record.version, name, seconds)

    def _fail(self, record: VersionRecord, name: str, why: str) -> None:
        self._failed[(record.digest, name)] = why
        log.error("%s v%d: %s not exported: %s", record.name, record.version, name, why)


def _checked_onnx(net: PlainNet, spec: DeploySpec) -> bytes:
    onnx = export_onnx(net, spec.sample_shape())
    check = check_onnx_export(onnx, net)
    if not check.passed:
        raise ValueError(
            f"model.onnx in ONNX Runtime differs from the stored net: max relative error "
            f"{check.max_rel_error:.3e} > {check.tolerance or 0:.3g}"
        )
    return onnx
