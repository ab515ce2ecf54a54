"""The embedded fallback: deploy nets loaded into the service process, run in worker threads."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from torch import Tensor

from reparam_core.artifacts import load_artifacts
from reparam_core.serving import (
    ServingModel,
    ServingOptions,
    exact_fp32,
    prepare_for_serving,
    warmup_batch_sizes,
)
from reparam_core.validate import resolve_device

from ..errors import BackendUnavailable

log = logging.getLogger("reparam.backend")


class InProcessBackend:
    name = "inprocess"

    def __init__(self, device: str = "auto", max_batch: int = 8) -> None:
        self.device = resolve_device(device)
        self.warmup_sizes = warmup_batch_sizes(max_batch)
        self._models: dict[tuple[str, int], ServingModel] = {}

    async def start(self) -> None:
        exact_fp32()
        log.warning(
            "inference runs in-process (TorchServe not used): no dynamic batching or worker isolation"
        )

    async def stop(self) -> None:
        self._models.clear()

    async def ready(self) -> bool:
        return True

    async def register(self, name: str, version: int, artifacts: Path, serving: ServingOptions) -> None:
        self._models[(name, version)] = await asyncio.to_thread(self._load, artifacts, serving)

    def _load(self, artifacts: Path, serving: ServingOptions) -> ServingModel:
        model, spec = load_artifacts(artifacts, self.device)
        return prepare_for_serving(model, serving, self.device, spec.sample_shape(), self.warmup_sizes)

    async def unregister(self, name: str, version: int) -> None:
        self._models.pop((name, version), None)

    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor:
        model = self._models.get((name, version))
        if model is None:
            raise BackendUnavailable(f"{name} v{version} is not loaded in this process")
        return await asyncio.to_thread(model.probabilities, batch)
