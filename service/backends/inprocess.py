"""The embedded fallback: deploy nets loaded into the service process, run in a worker thread.

Requests for one version are batched continuously: a request that finds the version idle runs at
once; those that arrive while a batch runs are taken together (up to ``max_batch`` rows) as the
next batch. No added delay at low load, one forward pass at a time (all cores) under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from torch import Tensor

from reparam_core import resolve_device
from reparam_core.deploy import ServingModel, ServingOptions, exact_fp32, load_for_serving, warmup_batch_sizes

from ..errors import BackendUnavailable
from .base import VersionLocks

log = logging.getLogger("reparam.backend")


class _Batcher:
    """A queue of requests for one served net and the task that runs them in batches."""

    def __init__(self, served: ServingModel, max_batch: int) -> None:
        self.served, self.max_batch = served, max_batch
        self.queue: asyncio.Queue[tuple[Tensor, asyncio.Future[Tensor]]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, batch: Tensor) -> Tensor:
        future: asyncio.Future[Tensor] = asyncio.get_running_loop().create_future()
        await self.queue.put((batch, future))
        return await future

    async def _run(self) -> None:
        while True:
            waiting = [await self.queue.get()]
            rows = waiting[0][0].shape[0]
            while rows < self.max_batch and not self.queue.empty():
                waiting.append(self.queue.get_nowait())
                rows += waiting[-1][0].shape[0]
            try:
                answers = await asyncio.to_thread(self.served.answer_each, [batch for batch, _ in waiting])
            except asyncio.CancelledError:  # unloaded while this batch ran
                _fail(waiting, _unloaded())
                raise
            except Exception as exc:  # handed to every waiting request; the batcher goes on
                _fail(waiting, exc)
                continue
            for (_, future), answer in zip(waiting, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        queued = []
        while not self.queue.empty():
            queued.append(self.queue.get_nowait())
        _fail(queued, _unloaded())


def _fail(waiting: list[tuple[Tensor, asyncio.Future[Tensor]]], exc: BaseException) -> None:
    for _, future in waiting:
        if not future.done():
            future.set_exception(exc)


def _unloaded() -> BackendUnavailable:
    return BackendUnavailable("the model version was unloaded")


class InProcessBackend:
    name = "inprocess"

    def __init__(self, device: str = "auto", max_batch: int = 8) -> None:
        self.device = resolve_device(device)
        self.max_batch = max_batch
        self.warmup_sizes = warmup_batch_sizes(max_batch)
        self._models: dict[tuple[str, int], _Batcher] = {}
        self.locks = VersionLocks()

    async def start(self) -> None:
        exact_fp32()
        log.warning("inference runs in-process (TorchServe not used): no worker isolation")

    async def stop(self) -> None:
        for batcher in self._models.values():
            await batcher.close()
        self._models.clear()

    async def ready(self) -> bool:
        return True

    def exited(self) -> bool:
        return False  # nothing runs outside this process

    async def restart(self) -> bool:
        return False

    async def loaded(self) -> dict[tuple[str, int], bool]:
        return dict.fromkeys(self._models, True)

    def busy(self, name: str, version: int) -> bool:
        return self.locks.busy(name, version)

    async def place_workers(self, warm: set[tuple[str, int]], cold: set[tuple[str, int]]) -> None:
        """Nothing to place: every registered version is in this process, ready."""

    def prewarm(self, name: str, version: int) -> None:
        """Nothing to load: a registered version is ready."""

    async def register(
        self, name: str, version: int, artifacts: Path, serving: ServingOptions
    ) -> dict[str, float]:
        async with self.locks.hold(name, version):
            started = time.perf_counter()
            served = await asyncio.to_thread(self._load, artifacts, serving)
            await self._unload(name, version)
            self._models[(name, version)] = _Batcher(served, self.max_batch)
            return {"register": time.perf_counter() - started}

    def _load(self, artifacts: Path, serving: ServingOptions) -> ServingModel:
        return load_for_serving(artifacts, serving, self.device, self.warmup_sizes)

    def served(self, name: str, version: int) -> ServingModel | None:
        """The prepared net behind a registered version (its options, for inspection)."""
        batcher = self._models.get((name, version))
        return batcher.served if batcher is not None else None

    async def unregister(self, name: str, version: int) -> None:
        async with self.locks.hold(name, version):
            await self._unload(name, version)

    async def _unload(self, name: str, version: int) -> None:
        batcher = self._models.pop((name, version), None)
        if batcher is not None:
            await batcher.close()

    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor:
        batcher = self._models.get((name, version))
        if batcher is None:
            raise BackendUnavailable(f"{name} v{version} is not loaded in this process")
        return await batcher.submit(batch)
