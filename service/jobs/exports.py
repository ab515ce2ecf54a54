"""``model.pt2`` (a ``torch.export`` program) written after a version is registered, off the request
path: exporting takes longer than the rest of storing (seconds for RepVGG-B1), and neither the gate
nor serving needs it.

One export at a time, in its own thread. The file appears in the version's artifact folder whole or
not at all; until then a download answers 503 with ``Retry-After``. Versions stored without one (the
process stopped before it was written) get theirs after the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from reparam_core.deploy import PROGRAM, DeploySpec, PlainNet, export_program, load_artifacts

from ..metrics import Metrics
from ..store import ArtifactStore, MetadataStore, VersionRecord

log = logging.getLogger("reparam.exports")


class ProgramExports:
    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore, metrics: Metrics) -> None:
        self.metadata, self.artifacts, self.metrics = metadata, artifacts, metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export")
        self._pending: set[str] = set()  # digests queued or being exported
        self._failed: dict[str, str] = {}  # digest: why (this process's attempts)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    def pending(self, digest: str) -> bool:
        return digest in self._pending

    def failure(self, digest: str) -> str | None:
        return self._failed.get(digest)

    def schedule(
        self, record: VersionRecord, model: PlainNet | None = None, spec: DeploySpec | None = None
    ) -> None:
        """Export ``record``'s net (given, or loaded from its artifacts) unless it is already there."""
        digest = record.digest
        if digest in self._pending or (self.artifacts.local_path(digest) / PROGRAM).exists():
            return
        self._pending.add(digest)
        future = self.executor.submit(self._export, record, model, spec)
        future.add_done_callback(lambda _: self._pending.discard(digest))

    async def resume(self) -> int:
        """Schedule the exports a stopped process left undone; returns how many."""
        records = await asyncio.to_thread(self.metadata.versions)
        missing = [r for r in records if not (self.artifacts.local_path(r.digest) / PROGRAM).exists()]
        for record in missing:
            self.schedule(record)
        return len(missing)

    def _export(self, record: VersionRecord, model: PlainNet | None, spec: DeploySpec | None) -> None:
        started = time.perf_counter()
        try:
            if model is None or spec is None:
                model, spec = load_artifacts(self.artifacts.local_path(record.digest))
            net, shape = model, (2, *spec.sample_shape())
            written = self.artifacts.add(
                record.digest, PROGRAM, lambda path: export_program(net, shape, path)
            )
        except Exception as exc:  # logged and answered on download; the version serves regardless
            self._failed[record.digest] = str(exc)
            log.error("%s v%d: model.pt2 not exported: %s", record.name, record.version, exc)
            return
        seconds = time.perf_counter() - started
        if written:  # not when the version was deleted meanwhile
            self.metrics.conversion_duration.labels("export").observe(seconds)
            log.info("%s v%d: model.pt2 exported in %.2f s", record.name, record.version, seconds)
