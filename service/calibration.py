"""Calibration images of ``POST /convert``: decoded with the spec's preprocessing (as ``/predict``
decodes images) into the float inputs the library quantizes on, stored beside the checkpoint.

At most ``MAX_CALIBRATION_SAMPLES`` images (the library's bound), ``MAX_CALIBRATION_BYTES`` in all; each is
checked like a ``/predict`` image (PNG, JPEG or WebP, pixel limits before decoding).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import IO

import torch
from safetensors.torch import save_file

from reparam_core import MAX_CALIBRATION_SAMPLES, ArchSpec, SpecError
from reparam_core.deploy import PixelNormaliser

from .errors import ServiceError
from .images import images_to_pixels
from .jobs import Upload

MAX_CALIBRATION_BYTES = 64 << 20
FILENAME = "calibration.safetensors"


def read_images(files: list[IO[bytes]]) -> list[bytes]:
    """The parts' bytes, refused (``SpecError``) past ``MAX_CALIBRATION_SAMPLES`` images or
    ``MAX_CALIBRATION_BYTES`` in all."""
    if len(files) > MAX_CALIBRATION_SAMPLES:
        raise SpecError(f"calibration: at most {MAX_CALIBRATION_SAMPLES} images, got {len(files)}")
    images, total = [], 0
    for file in files:
        data = file.read(MAX_CALIBRATION_BYTES - total + 1)
        total += len(data)
        if total > MAX_CALIBRATION_BYTES:
            raise SpecError(f"calibration: images of at most {MAX_CALIBRATION_BYTES >> 20} MiB in all")
        images.append(data)
    return images


def save_calibration(images: list[bytes], arch: ArchSpec, folder: Path) -> Upload:
    """Decode ``images`` as the spec's preprocessing says and save them as ``inputs`` [N, C, H, W]
    (float32) in ``folder``; the upload's sha256 is that of the images, in order."""
    started, digest = time.perf_counter(), hashlib.sha256()
    preprocess = arch.preprocess.model_dump(mode="json")
    pixels = []
    for index, data in enumerate(images):
        digest.update(hashlib.sha256(data).digest())
        try:
            pixels.append(images_to_pixels([data], preprocess, arch.in_channels))
        except ServiceError as exc:
            raise type(exc)(f"calibration image {index + 1}: {exc.detail}") from None
    batch = PixelNormaliser(preprocess, arch.in_channels)(torch.cat(pixels)).contiguous()
    path = folder / FILENAME
    save_file({"inputs": batch}, str(path))
    size = sum(len(data) for data in images)
    return Upload(
        path, digest.hexdigest(), size, f"{len(images)} calibration images", time.perf_counter() - started
    )
