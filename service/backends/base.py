"""What every inference backend offers the routes: register versions, predict probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import Tensor

from reparam_core.deploy import ServingOptions


class InferenceBackend(Protocol):
    """``register`` loads a version prepared as ``serving`` says and returns once it is warmed up;
    ``predict``: softmax probabilities ``[N, classes]`` for a preprocessed float batch
    ``[N, C, H, W]`` or uint8 pixels ``[N, H, W, C]`` (normalised by the served net)."""

    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def ready(self) -> bool: ...
    async def register(self, name: str, version: int, artifacts: Path, serving: ServingOptions) -> None: ...
    async def unregister(self, name: str, version: int) -> None: ...
    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor: ...
