"""Keeps the backend serving every stored version, and a managed TorchServe running.

Every ``supervise_interval_s`` seconds (every ``DOWN_RECHECK_S`` while the backend is down) the
supervisor
1. asks the backend whether it answers. A managed TorchServe that has exited is restarted at once,
   one that is running but has not answered ``HUNG_AFTER_CHECKS`` checks in a row is restarted
   too; a failed restart is tried again after 1, 2, 4 ... 30 s, and after
   ``supervise_max_restarts`` failures in a row the supervisor gives up (state ``failed``:
   /healthz answers 503 and ``reparam serve`` exits with status 1). An external TorchServe that
   does not answer is waited for.
2. compares the stored versions with the backend's registrations and registers the missing ones,
   ``registration_concurrency`` at a time: all of them at start-up and after a restart, and any
   registration lost since (someone unregistered it through TorchServe's management API). A version
   whose registration fails is tried again after a delay that doubles up to ``RETRY_MAX_S``.
   Registrations of ours whose version has no row any more (deleted through another replica that
   shares the TorchServe) are unregistered. Registering is idempotent: replicas sharing one
   TorchServe may all try a new version; the first registers it, the others find it registered.
3. applies the worker policy (``worker_policy``): which versions keep their workers loaded; before
   registering, so that a cold version is registered without workers.
4. records the state /readyz reports: ``ready`` (every stored version has a ready worker),
   ``pending`` (some have not yet: registering, or workers starting), ``down`` (the backend does
   not answer), ``failed``; every change of state is logged.
Versions being deleted (retired in the version cache), being stored by a conversion (claimed in
the version cache) or registered or unregistered right now (``backend.busy``) are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from reparam_core.deploy import ServingOptions

from ..config import Settings
from ..metrics import Metrics
from ..store import ArtifactStore, MetadataStore, VersionCache, VersionRecord
from .base import InferenceBackend
from .worker_policy import split_warm_cold

log = logging.getLogger("reparam.supervisor")
HUNG_AFTER_CHECKS = 3
DOWN_RECHECK_S = 0.5  # while the backend is down, check this often (a dead TorchServe is seen sooner)
RETRY_MAX_S = 300.0
RESTART_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Status:
    state: str  # pending | ready | down | failed
    pending: int = 0  # stored versions without a ready worker
    failed: tuple[str, ...] = ()  # versions whose last registration failed ("name vN")
    detail: str | None = None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        backend: InferenceBackend,
        metadata: MetadataStore,
        artifacts: ArtifactStore,
        versions: VersionCache,
        metrics: Metrics,
        on_give_up: Callable[[], None] | None = None,
    ) -> None:
        self.settings, self.backend, self.metadata = settings, backend, metadata
        self.artifacts, self.versions, self.metrics = artifacts, versions, metrics
        self.on_give_up = on_give_up
        self.status = Status("pending", detail="not started")
        self._task: asyncio.Task[None] | None = None
        self._silent_checks = 0  # checks in a row the backend did not answer
        self._failed_restarts = 0
        self._retry: dict[tuple[str, int], tuple[float, float]] = {}  # key -> (not before, last delay)
        self._seen: set[tuple[str, int]] = set()  # registrations seen since the backend (re)started
        self._orphans: set[tuple[str, int]] = set()  # registered, but without a row at the last check
        self._slots = asyncio.Semaphore(settings.registration_concurrency)

    async def start(self) -> None:
        """Count the stored versions (all pending: the backend has just started), then supervise."""
        stored = await asyncio.to_thread(self.metadata.versions)
        self._report(stored, {})
        self._task = asyncio.get_running_loop().create_task(self._run(), name="supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while self.status.state != "failed":
            try:
                await self.check()
            except Exception:  # a bug here must not end supervision
                log.exception("supervisor check failed")
            interval = self.settings.supervise_interval_s
            await asyncio.sleep(min(interval, DOWN_RECHECK_S) if self.status.state == "down" else interval)

    async def check(self) -> None:
        """One round: the backend answers (else restart it), every stored version is registered."""
        if not await self.backend.ready() and not await self._backend_silent():
            return
        if self._silent_checks:
            log.warning("the %s backend answers again", self.backend.name)
            self._silent_checks = 0
        try:
            stored, loaded = await self._observe()
            await self._place_workers(stored)
            missing = [r for r in stored if (r.name, r.version) not in loaded and self._due(r)]
            if missing:
                self._report(stored, loaded)
                await asyncio.gather(*(self._register(record) for record in missing))
                stored, loaded = await self._observe()
        except Exception as exc:  # the backend stopped answering meanwhile: the next check sees it
            log.warning("could not compare the registrations with the store: %s", exc)
            return
        self._report(stored, loaded)

    async def _observe(self) -> tuple[list[VersionRecord], dict[tuple[str, int], bool]]:
        """The stored versions this supervisor looks after, and the backend's registrations.

        Registrations are read first: a version's row is inserted before it is registered, so a
        registration without a row read after it is one whose version was deleted (by another
        replica, or by a conversion whose registration failed): unregistered when a second check
        finds it so too (a deletion under way unregisters it itself)."""
        loaded = await self.backend.loaded()
        stored = await asyncio.to_thread(self.metadata.versions)
        await self._unregister_orphans({(r.name, r.version) for r in stored}, loaded)
        wanted = [
            r
            for r in stored
            if not self.versions.retired(r)
            and not self.versions.claimed(r)
            and not self.backend.busy(r.name, r.version)
        ]
        keys = {(r.name, r.version) for r in wanted}
        for name, version in sorted((self._seen & keys) - loaded.keys()):
            log.warning("%s v%d lost its registration with the backend: registering it again", name, version)
        self._seen = keys & loaded.keys()
        self._retry = {key: retry for key, retry in self._retry.items() if key in keys}  # deleted since
        return wanted, loaded

    async def _unregister_orphans(
        self, rows: set[tuple[str, int]], loaded: dict[tuple[str, int], bool]
    ) -> None:
        orphans = {key for key in loaded.keys() - rows if not self.backend.busy(*key)}
        for name, version in sorted(orphans & self._orphans):
            log.warning("%s v%d is registered but no longer stored: unregistering it", name, version)
            try:
                await self.backend.unregister(name, version)
            except Exception as exc:  # tried again at the next check
                log.error("unregistering %s v%d failed: %s", name, version, exc)
            else:
                loaded.pop((name, version), None)
                orphans.discard((name, version))
        self._orphans = orphans

    async def _place_workers(self, stored: list[VersionRecord]) -> None:
        """The worker policy: the latest version of each model and the aliased ones warm."""
        aliases = await asyncio.to_thread(self.metadata.aliases)
        aliased = {(name, alias.version) for name, named in aliases.items() for alias in named.values()}
        warm, cold = split_warm_cold(self.settings, ((r.name, r.version) for r in stored), aliased)
        await self.backend.place_workers(warm, cold)

    def _due(self, record: VersionRecord) -> bool:
        retry = self._retry.get((record.name, record.version))
        return retry is None or time.monotonic() >= retry[0]

    async def _register(self, record: VersionRecord) -> None:
        key = (record.name, record.version)
        async with self._slots:
            if self.versions.retired(record) or self.versions.claimed(record) or self.backend.busy(*key):
                return  # a deletion or a conversion got there first
            try:
                path = await asyncio.to_thread(self.artifacts.local_path, record.digest)  # S3: fetched
                if not path.exists():
                    raise FileNotFoundError(f"its artifacts are missing at {path}")
                serving = ServingOptions.model_validate(record.serving)
                await self.backend.register(record.name, record.version, path, serving)
            except Exception as exc:
                previous = self._retry.get(key)
                delay = min(2 * previous[1], RETRY_MAX_S) if previous else self.settings.supervise_interval_s
                self._retry[key] = (time.monotonic() + delay, delay)
                log.error("registering %s v%d failed (%s); next try in %.0f s", *key, exc, delay)
            else:
                self._retry.pop(key, None)

    def _report(self, stored: list[VersionRecord], loaded: dict[tuple[str, int], bool]) -> None:
        keys = [(r.name, r.version) for r in stored]
        failed = tuple(f"{n} v{v}" for n, v in keys if (n, v) in self._retry and not loaded.get((n, v)))
        pending = sum(1 for key in keys if not loaded.get(key) and key not in self._retry)
        self.metrics.models_registered.set(sum(1 for key in keys if key in loaded))
        detail = f"{pending} of {len(keys)} stored versions not served yet" if pending else None
        self._set(Status("pending" if pending else "ready", pending, failed, detail))

    async def _backend_silent(self) -> bool:
        """Record the outage; restart a managed TorchServe when due. True: it answers again."""
        self._silent_checks += 1
        exited = self.backend.exited()
        what = "has exited" if exited else f"did not answer {self._silent_checks} check(s) in a row"
        self._set(Status("down", detail=f"the {self.backend.name} backend {what}"))
        if not exited and self._silent_checks < HUNG_AFTER_CHECKS:
            return False
        started = time.monotonic()
        try:
            restarted = await self.backend.restart()
        except Exception as exc:
            self._failed_restarts += 1
            if self._failed_restarts >= self.settings.supervise_max_restarts:
                self._give_up(
                    f"TorchServe could not be restarted {self._failed_restarts} times in a row: {exc}"
                )
                return False
            delay = min(2.0 ** (self._failed_restarts - 1), RESTART_BACKOFF_MAX_S)
            log.error("restarting TorchServe failed (%s); next try in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            return False
        if restarted:  # False: an external TorchServe, which is waited for
            took = time.monotonic() - started
            log.warning(
                "TorchServe %s: restarted in %.1f s, registering every stored version again", what, took
            )
            self._failed_restarts = 0
            self._retry.clear()
            self._seen.clear()
        return restarted

    def _give_up(self, why: str) -> None:
        self._set(Status("failed", detail=why))
        log.critical("giving up: %s; the service stops", why)
        if self.on_give_up is not None:
            self.on_give_up()

    def _set(self, status: Status) -> None:
        if (status.state, status.pending, status.failed) != (
            self.status.state,
            self.status.pending,
            self.status.failed,
        ):
            level = logging.INFO if status.state in ("ready", "pending") else logging.ERROR
            log.log(level, "backend %s: %s", status.state, status.detail or "every stored version is served")
        self.status = status
