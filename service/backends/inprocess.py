"""The embedded fallback: deploy nets loaded into the service process, run in worker threads."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import torch
from torch import Tensor

from reparam_core.artifacts import load_artifacts
from reparam_core.plain import PlainNet
from reparam_core.validate import resolve_device

from ..errors import BackendUnavailable

log = logging.getLogger("reparam.backend")


class InProcessBackend:
    name = "inprocess"

    def __init__(self, device: str = "auto") -> None:
        self.device = resolve_device(device)
        self._models: dict[tuple[str, int], PlainNet] = {}

    async def start(self) -> None:
        log.warning(
            "inference runs in-process (TorchServe not used): no dynamic batching or worker isolation"
        )

    async def stop(self) -> None:
        self._models.clear()

    async def ready(self) -> bool:
        return True

    async def register(self, name: str, version: int, artifacts: Path) -> None:
        model, _ = await asyncio.to_thread(load_artifacts, artifacts, self.device)
        self._models[(name, version)] = model

    async def unregister(self, name: str, version: int) -> None:
        self._models.pop((name, version), None)

    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor:
        model = self._models.get((name, version))
        if model is None:
            raise BackendUnavailable(f"{name} v{version} is not loaded in this process")
        return await asyncio.to_thread(_infer, model, batch, self.device)


def _infer(model: PlainNet, batch: Tensor, device: torch.device) -> Tensor:
    with torch.inference_mode():
        return torch.softmax(model(batch.to(device)), dim=1).float().cpu()
