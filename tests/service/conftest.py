"""Service fixtures: an app on a temporary data folder, small checkpoints, images."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from reparam_core.build import build_train_model
from reparam_core.serving import PixelNormaliser
from service.app import create_app
from service.config import Settings
from service.images import image_to_pixels
from tests.support import randomize_

SPEC = {
    "family": "repvgg",
    "stem": {"width": 8},
    "stages": [{"depth": 2, "width": 8}, {"depth": 1, "width": 16}],
    "num_classes": 4,
    "input_size": [32, 32],
    "preprocess": {"resize": 36, "crop": 32},
    "labels": ["cat", "dog", "owl", "fox"],
}


def make_checkpoint(path: Path, spec: dict = SPEC, seed: int = 0) -> Path:
    torch.save({"state_dict": randomize_(build_train_model(spec), seed=seed).state_dict()}, path)
    return path


def png_bytes(width: int = 48, height: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def model_input(image: bytes, preprocess: dict, channels: int = 3) -> torch.Tensor:
    """What a served net computes from an image: the service's pixels, normalised as it does."""
    return PixelNormaliser(preprocess, channels)(image_to_pixels(image, preprocess, channels))


def convert_form(checkpoint: Path, name: str = "tiny", spec: dict = SPEC, **extra: str) -> dict:
    return {
        "files": {"checkpoint": (checkpoint.name, checkpoint.read_bytes(), "application/octet-stream")},
        "data": {"spec": json.dumps(spec), "name": name, **extra},
    }


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", backend="inprocess", device="cpu", export_program=False)


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "tiny.pth")
