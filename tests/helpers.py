"""Helpers shared by the tests (no test module imports another): small specs and checkpoints with
realistic statistics, images, the service's view of an image, and one polling helper."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pytest
import torch
from torch import Tensor

from reparam_core import build_train_model
from reparam_core.deploy import cpu_capabilities
from reparam_core.example import randomize_statistics as randomize_

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

__all__ = [
    "NATIVE_BF16",
    "ROOT",
    "SERVICE_SPEC",
    "TINY",
    "convert_form",
    "kill_processes_under",
    "make_checkpoint",
    "model_input",
    "png_bytes",
    "processes_under",
    "randomize_",
    "state_of",
    "training_probabilities",
    "wait_for",
    "wait_ready",
]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
# bf16 serving on the CPU is refused without native bf16 (avx512_bf16 / AMX): its tests need one.
NATIVE_BF16 = pytest.mark.skipif(not cpu_capabilities().bf16, reason="this CPU has no native bf16")

# A small RepVGG for library tests (non-square input).
TINY: dict[str, Any] = {
    "family": "repvgg",
    "stem": {"width": 8},
    "stages": [{"depth": 2, "width": 8}, {"depth": 1, "width": 16}],
    "num_classes": 5,
    "input_size": [32, 24],
}

# The service tests' model: labels and a preprocessing of its own.
SERVICE_SPEC: dict[str, Any] = {
    "family": "repvgg",
    "stem": {"width": 8},
    "stages": [{"depth": 2, "width": 8}, {"depth": 1, "width": 16}],
    "num_classes": 4,
    "input_size": [32, 32],
    "preprocess": {"resize": 36, "crop": 32},
    "labels": ["cat", "dog", "owl", "fox"],
}


def state_of(spec: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    """The state dict of ``spec``'s training net with realistic statistics."""
    return randomize_(build_train_model(spec), seed=seed).state_dict()


def make_checkpoint(path: Path, spec: dict[str, Any] = SERVICE_SPEC, seed: int = 0) -> Path:
    torch.save({"state_dict": state_of(spec, seed)}, path)
    return path


def training_probabilities(batch: Tensor, spec: dict[str, Any] = SERVICE_SPEC, seed: int = 0) -> Tensor:
    """Softmax of the training net that :func:`make_checkpoint` saved, on a preprocessed batch."""
    model = randomize_(build_train_model(spec), seed=seed).eval()
    with torch.no_grad():
        return torch.softmax(model(batch), dim=1)


def png_bytes(width: int = 48, height: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def model_input(image: bytes, preprocess: dict[str, Any], channels: int = 3) -> Tensor:
    """What a served net computes from an image: the service's pixels, normalised as it does."""
    from reparam_core.deploy import PixelNormaliser
    from service.images import image_to_pixels

    return PixelNormaliser(preprocess, channels)(image_to_pixels(image, preprocess, channels))


def convert_form(
    checkpoint: Path, name: str = "tiny", spec: dict[str, Any] = SERVICE_SPEC, **extra: str
) -> dict[str, Any]:
    """Keyword arguments of a ``POST /convert`` through the test client."""
    return {
        "files": {"checkpoint": (checkpoint.name, checkpoint.read_bytes(), "application/octet-stream")},
        "data": {"spec": json.dumps(spec), "name": name, **extra},
    }


def ready(client: TestClient, url: str, waiting: tuple[int, ...] = (404, 503)) -> Any:
    """The answer to GET ``url`` once it is no longer one of ``waiting``, else None (ask again)."""
    answer = client.get(url)
    return None if answer.status_code in waiting else answer


def wait_for(poll: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1) -> T:
    """Call ``poll`` until it returns something other than ``None``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = poll()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {timeout:.0f} s")
        time.sleep(interval)


def wait_ready(client: Any, timeout: float = 120.0) -> dict[str, Any]:
    """The ``/readyz`` body once it is 200: stored versions are registered in the background."""

    def ready() -> dict[str, Any] | None:
        response = client.get("/readyz")
        return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]

    return wait_for(ready, timeout=timeout, interval=0.1)


def processes_under(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (a data folder's TorchServe, its guard)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in line and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def kill_processes_under(folder: Path) -> None:
    """Test clean-up: SIGKILL every process of ``folder``, with its process group."""
    for pid in processes_under(folder):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group != os.getpgrp():  # never the test run's own group
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
