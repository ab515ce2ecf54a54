"""Conversion jobs (``POST /convert?wait=false``) as a queue on the database that every replica runs.

``submit`` stores a job's input files where every replica reads them (``store.job_inputs``), then
inserts the job ``queued``. Each replica's runner polls (``REPARAM_JOB_POLL_S``, at once after a
submit of its own) while it has a free conversion slot, claims a job (a compare-and-set: one
replica gets it), fetches its inputs into a work folder and runs it through
:meth:`Conversions.run`, its stages written to the job as they start. While it runs, the runner
renews the job's lease every ``REPARAM_JOB_HEARTBEAT_S``. A replica that stops heartbeating (killed,
frozen, cut off) loses the job after ``REPARAM_JOB_LEASE_S``: another replica (or this one,
restarted) claims it again, up to ``REPARAM_JOB_MAX_ATTEMPTS`` claims, after which it fails with 503.
The outcome, like every write to a claimed job, is a compare-and-set on the claim, so a replica that
lost its lease cannot overwrite its successor's. A retry meets what its predecessor stored: the same
conversion is one version (found again, ``created: false``), registered by the supervisor if the
predecessor stopped before registering it. Inputs are deleted once the job has ended for good;
inputs no job names (older than an hour) are swept. A runner that stops gracefully queues its jobs
again, those attempts not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import shutil
import time
import uuid
from typing import Any

from reparam_core import EquivalenceError, ReparamError

from ..config import Settings
from ..errors import ServiceError, status_for
from ..store import MetadataStore
from ..store.job_inputs import JobInputs
from ..store.metadata import JobRecord, JobState
from .conversions import ConversionRequest, Conversions

log = logging.getLogger("reparam.jobs")
ORPHAN_AGE_S = 3600.0  # inputs older than this that no unfinished job names are deleted
SWEEP_EVERY_S = 600.0


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        metadata: MetadataStore,
        inputs: JobInputs,
        conversions: Conversions,
    ) -> None:
        self.settings, self.metadata, self.inputs, self.conversions = settings, metadata, inputs, conversions
        self.owner = settings.resolved_replica_id
        self.staging = settings.resolved_artifacts_dir / "tmp"  # the work folders
        self.running: dict[str, tuple[JobRecord, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._swept = float("-inf")  # monotonic time of the last sweep: the first poll sweeps

    async def submit(self, request: ConversionRequest) -> str:
        """Queue ``request`` and return the job's id. Its upload folder is taken: stored as the job's
        inputs before the job row exists, so a claimed job always has them."""
        job_id, folder = uuid.uuid4().hex, request.upload.path.parent
        try:
            await asyncio.to_thread(self.inputs.put, job_id, folder)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)  # copied (S3), or storing failed
        try:
            await asyncio.to_thread(self.metadata.create_job, job_id, request.name, request.to_json())
        except BaseException:
            await asyncio.to_thread(self.inputs.delete, job_id)
            raise
        self._wake.set()
        return job_id

    def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stop claiming; the jobs under way are queued again (for another replica, or the next start)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        running = list(self.running.values())
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        for job, _ in running:
            if await asyncio.to_thread(self.metadata.release_job, job):
                log.info("job %s queued again: this replica stops", job.id)

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # the database unreachable for a while: the next poll tries again
                log.exception("looking for conversion jobs failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.job_poll_s)
            self._wake.clear()

    async def poll(self) -> None:
        """Fail the jobs out of attempts, sweep orphaned inputs now and then, claim jobs while a
        slot is free."""
        lease, attempts = self.settings.job_lease_s, self.settings.job_max_attempts
        for failed in await asyncio.to_thread(self.metadata.fail_abandoned_jobs, lease, attempts):
            log.warning("job %s failed: %s", failed.id, (failed.result or {}).get("detail"))
            await asyncio.to_thread(self.inputs.delete, failed.id)
        if time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._swept = time.monotonic()
            await self._sweep()
        while len(self.running) < self.settings.conversion_workers:
            job = await asyncio.to_thread(self.metadata.claim_job, self.owner, lease, attempts)
            if job is None:
                return
            if job.attempts > 1:
                log.warning(
                    "job %s of %s: its replica stopped; attempt %d here", job.id, job.name, job.attempts
                )
            task = asyncio.get_running_loop().create_task(self._run(job))
            self.running[job.id] = (job, task)
            task.add_done_callback(functools.partial(self._done, job.id))

    def _done(self, job_id: str, _: asyncio.Task[None]) -> None:
        self.running.pop(job_id, None)
        self._wake.set()  # a slot is free

    async def _sweep(self) -> None:
        old = await asyncio.to_thread(self.inputs.older_than, ORPHAN_AGE_S)
        if not old:
            return
        orphans = set(old) - await asyncio.to_thread(self.metadata.unfinished_jobs, old)
        for job_id in orphans:
            await asyncio.to_thread(self.inputs.delete, job_id)
        if orphans:
            log.warning("%d jobs' inputs left without a job to run them: deleted", len(orphans))

    async def _run(self, job: JobRecord) -> None:
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(job))
        try:
            status, result = await self._convert(job)
        finally:
            heartbeat.cancel()
        try:
            recorded = await asyncio.to_thread(self.metadata.finish_job, job, status, result)
        except Exception:  # the job is run again once its lease runs out
            log.exception("job %s: its outcome could not be recorded", job.id)
            return
        if recorded:
            await asyncio.to_thread(self.inputs.delete, job.id)
        else:
            log.warning(
                "job %s: another replica took it over meanwhile; this outcome is not recorded", job.id
            )

    async def _heartbeat(self, job: JobRecord) -> None:
        while True:
            await asyncio.sleep(self.settings.job_heartbeat_s)
            try:
                held = await asyncio.to_thread(self.metadata.heartbeat, job)
            except Exception as exc:  # the lease may yet be renewed in time
                log.warning("job %s: its lease was not renewed (%s)", job.id, exc)
                continue
            if not held:
                log.warning("job %s: its lease ran out and another replica took it over", job.id)
                return

    def _stage(self, job: JobRecord, stage: str) -> None:
        self.metadata.set_job_stage(job, stage)  # nothing is written once the claim is lost

    async def _convert(self, job: JobRecord) -> tuple[JobState, dict[str, Any]]:
        assert job.request is not None  # jobs without one are from before 0003, failed by it
        work = self.staging / f"job-{job.id}-{secrets.token_hex(4)}"
        try:
            await asyncio.to_thread(self.inputs.fetch, job.id, work)
            request = ConversionRequest.from_json(job.request, work)
        except Exception as exc:
            await asyncio.to_thread(shutil.rmtree, work, True)
            log.exception("job %s: its inputs could not be read", job.id)
            return "failed", {"status": 503, "detail": f"the job's input files could not be read: {exc}"}
        try:  # the work folder is the conversion's from here on (removed when it is done)
            outcome = await self.conversions.run(request, lambda stage: self._stage(job, stage))
        except EquivalenceError as exc:
            report = exc.report.model_dump(mode="json") if exc.report is not None else None
            return "failed", {"status": 422, "detail": str(exc), "report": report}
        except (ReparamError, ServiceError) as exc:
            return "failed", {"status": status_for(exc), "detail": str(exc)}
        except Exception as exc:  # recorded for the poller; the service keeps running
            log.exception("conversion job %s failed", job.id)
            return "failed", {"status": 500, "detail": f"internal error ({type(exc).__name__})"}
        record = outcome.record
        return "succeeded", {
            "model": record.name,
            "version": record.version,
            "digest": record.digest,
            "created": outcome.created,
        }
