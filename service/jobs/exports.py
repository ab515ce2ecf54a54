"""Artifacts written after a version is registered, off the request path: ``model.onnx`` (unless the
conversion already made it, as it does for the ONNX runtimes, which serve it) and ``model.pt2`` (a
``torch.export`` program; ``REPARAM_EXPORT_PROGRAM``). Each takes longer than the rest of storing
(seconds for RepVGG-B1, tens under load), and neither the gate nor a torch worker needs them.

One file at a time, each in a child process (:mod:`.export_worker`: why not a thread) that this
service stops when it stops. ``model.onnx`` is checked in ONNX Runtime against the stored net run in
float64 before it is kept. Each file appears in the version's artifact folder whole or not at all;
until then a download answers 503 with ``Retry-After``, after a failure 404 with the reason.
Versions stored without them (the process stopped first) get theirs after the next start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reparam_core.deploy import ONNX, PROGRAM

from ..config import Settings
from ..metrics import Metrics
from ..store import ArtifactStore, MetadataStore, VersionRecord

log = logging.getLogger("reparam.exports")
STAGES = {ONNX: "export_onnx", PROGRAM: "export_program"}  # their label in /metrics
TIMEOUT_S = 3600.0  # one export; RepVGG-B3's model.pt2 took about a minute on a loaded 2-core VM
STOP_GRACE_S = 10.0


class Exports:
    def __init__(
        self, settings: Settings, metadata: MetadataStore, artifacts: ArtifactStore, metrics: Metrics
    ) -> None:
        self.settings, self.metadata, self.artifacts, self.metrics = settings, metadata, artifacts, metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export")
        self._pending: set[str] = set()  # digests queued or being exported
        self._failed: dict[tuple[str, str], str] = {}  # (digest, file): why (this process's attempts)
        self._child: subprocess.Popen[bytes] | None = None
        self._closing = threading.Event()

    @property
    def files(self) -> tuple[str, ...]:
        return (ONNX, PROGRAM) if self.settings.export_program else (ONNX,)

    def close(self) -> None:
        """Drop the queued exports and stop the one under way (its file is not kept)."""
        self._closing.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def pending(self, digest: str, filename: str) -> bool:
        return filename in self.files and digest in self._pending

    def failure(self, digest: str, filename: str) -> str | None:
        return self._failed.get((digest, filename))

    def missing(self, digest: str) -> list[str]:
        folder = self.artifacts.local_path(digest)
        return [name for name in self.files if not (folder / name).exists()]

    def schedule(self, record: VersionRecord) -> None:
        """Write what ``record``'s folder lacks, in the background."""
        digest = record.digest
        if digest in self._pending or not self.missing(digest):
            return
        self._pending.add(digest)
        future = self.executor.submit(self._export_all, record)
        future.add_done_callback(lambda _: self._pending.discard(digest))

    async def resume(self) -> int:
        """Schedule the exports a stopped process left undone; returns for how many versions."""
        return await asyncio.to_thread(self._resume)

    def _resume(self) -> int:
        missing = [r for r in self.metadata.versions() if self.missing(r.digest)]
        for record in missing:
            self.schedule(record)
        return len(missing)

    def _export_all(self, record: VersionRecord) -> None:
        folder = self.artifacts.local_path(record.digest)
        for name in self.missing(record.digest):
            if self._closing.is_set():
                return
            started = time.perf_counter()
            try:
                written = self.artifacts.add(record.digest, name, functools.partial(self._run, folder, name))
            except Exception as exc:  # logged and answered on download; the version serves regardless
                if not self._closing.is_set():
                    self._fail(record, name, str(exc))
                continue
            seconds = time.perf_counter() - started
            if not written:  # the version was deleted meanwhile
                return
            self.metrics.conversion_duration.labels(STAGES[name]).observe(seconds)
            log.info("%s v%d: %s exported in %.2f s", record.name, record.version, name, seconds)

    def _command(self, folder: Path, name: str, out: Path) -> list[str]:
        return [sys.executable, "-m", "service.jobs.export_worker", str(folder), name, str(out)]

    def _run(self, folder: Path, name: str, out: Path) -> None:
        """The export worker writing ``name`` to ``out``; raises with its reason when it fails."""
        with tempfile.TemporaryFile() as errors:
            child = subprocess.Popen(
                self._command(folder, name, out),
                stdin=subprocess.PIPE,  # held open, never written: the worker exits when it closes
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            self._child = child
            try:
                child.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                raise RuntimeError(f"exporting took more than {TIMEOUT_S:.0f} s") from None
            finally:
                self._child = None
                _stop(child)
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
        if child.returncode != 0:
            raise RuntimeError(lines[-1] if lines else f"the export worker exited with {child.returncode}")

    def _fail(self, record: VersionRecord, name: str, why: str) -> None:
        self._failed[(record.digest, name)] = why
        log.error("%s v%d: %s not exported: %s", record.name, record.version, name, why)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Close the worker's stdin (it exits at end of file); kill it if it lingers."""
    if child.stdin is not None:
        child.stdin.close()
    try:
        child.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
