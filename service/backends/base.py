"""What every inference backend offers the routes and the supervisor, and the per-version locks
both backends use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from torch import Tensor

from reparam_core.deploy import ServingOptions


class InferenceBackend(Protocol):
    """``register`` loads a version prepared as ``serving`` says and returns once it is warmed up,
    with the seconds each of its steps took (``archive``: the folder TorchServe loads; ``register``);
    ``predict``: softmax probabilities ``[N, classes]`` for a preprocessed float batch
    ``[N, C, H, W]`` or uint8 pixels ``[N, H, W, C]`` (normalised by the served net).
    For the supervisor: ``ready`` says whether the backend answers now; ``exited`` whether a process
    it runs has died (restart at once rather than wait); ``restart`` restarts that process (False:
    there is none to restart: in-process, or an external TorchServe); ``loaded`` maps each
    registered version to whether it can answer (a ready worker, or none wanted until a request
    comes); ``busy`` whether a register or unregister of that version is under way.
    ``place_workers`` applies the worker policy (``worker_policy``): ``warm`` versions keep their
    workers, ``cold`` ones may be unloaded while idle; ``prewarm`` loads a version's workers now,
    in the background (an alias moved to it)."""

    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ready(self) -> bool: ...
    def exited(self) -> bool: ...
    async def restart(self) -> bool: ...
    async def loaded(self) -> dict[tuple[str, int], bool]: ...
    def busy(self, name: str, version: int) -> bool: ...
    async def place_workers(self, warm: set[tuple[str, int]], cold: set[tuple[str, int]]) -> None: ...
    def prewarm(self, name: str, version: int) -> None: ...
    async def register(
        self, name: str, version: int, artifacts: Path, serving: ServingOptions
    ) -> dict[str, float]: ...
    async def unregister(self, name: str, version: int) -> None: ...
    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor: ...


class VersionLocks:
    """One lock per version: a register and an unregister of the same version never interleave, in
    the order they were asked for, and ``busy`` tells which versions have one under way."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, int], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, name: str, version: int) -> AsyncIterator[None]:
        key = (name, version)
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def busy(self, name: str, version: int) -> bool:
        return (name, version) in self._locks
