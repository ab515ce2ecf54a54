"""Image preprocessing (service pixels + the served net's normalisation) against an independent
float64 reimplementation of the documented steps."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from reparam_core.deploy import PixelNormaliser
from service.errors import BadInput
from service.images import image_to_pixels

PREPROCESS = {"resize": 40, "crop": 32, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)}


def encoded(mode: str, width: int = 50, height: int = 60, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def reference(data: bytes, channels: int) -> torch.Tensor:
    """Shorter side to 40 (bilinear), centre crop 32, /255, minus mean, over std, in float64."""
    image = Image.open(io.BytesIO(data)).convert("RGB" if channels == 3 else "L")
    scale = 40 / min(image.size)
    image = image.resize(
        (max(32, round(image.width * scale)), max(32, round(image.height * scale))), Image.Resampling.BILINEAR
    )
    left, top = (image.width - 32) // 2, (image.height - 32) // 2
    image = image.crop((left, top, left + 32, top + 32))
    x = torch.tensor(np.array(image), dtype=torch.float64).reshape(32, 32, channels).permute(2, 0, 1) / 255
    mean = torch.tensor(PREPROCESS["mean"][:channels], dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(PREPROCESS["std"][:channels], dtype=torch.float64).view(-1, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize(
    ("mode", "channels", "fmt"),
    [("RGB", 3, "PNG"), ("RGBA", 3, "PNG"), ("P", 3, "PNG"), ("L", 1, "PNG"), ("RGB", 3, "JPEG")],
)
def test_matches_the_documented_preprocessing(mode: str, channels: int, fmt: str) -> None:
    data = encoded(mode, fmt=fmt)
    pixels = image_to_pixels(data, PREPROCESS, channels)
    assert pixels.shape == (1, 32, 32, channels) and pixels.dtype == torch.uint8
    tensor = PixelNormaliser(PREPROCESS, channels)(pixels)
    assert tensor.shape == (1, channels, 32, 32) and tensor.dtype == torch.float32
    assert (tensor[0].double() - reference(data, channels)).abs().max().item() < 1e-6
    assert tensor.is_contiguous(memory_format=torch.channels_last)  # what the served nets take as is


def test_normaliser_refuses_what_is_not_pixels() -> None:
    normalise = PixelNormaliser(PREPROCESS, 3)
    with pytest.raises(ValueError, match=r"expected uint8 pixels \[N, H, W, 3\], got torch.float32"):
        normalise(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"got torch.uint8 \[1, 8, 8, 1\]"):
        normalise(torch.zeros(1, 8, 8, 1, dtype=torch.uint8))


def test_undecodable_and_truncated_images_are_bad_input() -> None:
    with pytest.raises(BadInput, match="cannot decode"):
        image_to_pixels(b"not an image", PREPROCESS, 3)
    with pytest.raises(BadInput, match="cannot decode"):
        image_to_pixels(encoded("RGB")[:200], PREPROCESS, 3)
