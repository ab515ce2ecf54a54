"""Turning request bodies into model input: decoded, resized and cropped images, or JSON tensors."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from reparam_core.deploy import Preprocess

from .errors import BadInput

IMAGE_TYPES = ("image/png", "image/jpeg")
DEFAULTS = Preprocess()  # the spec's preprocessing defaults (ImageNet's)
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding


def decode_base64_image(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadInput("image: not URL-safe base64") from None


def image_to_pixels(data: bytes, preprocess: dict[str, Any], in_channels: int) -> Tensor:
    """Decode PNG/JPEG, resize the shorter side, centre-crop: uint8 pixels ``[1, S, S, C]``.

    The served net normalises them (``reparam_core.deploy.PixelNormaliser``): four times fewer
    bytes travel to the backend than as float input."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise BadInput(f"image of {image.width}x{image.height} pixels is too large")
        image.load()
        mode = "RGB" if in_channels == 3 else "L"
        image = image if image.mode == mode else image.convert(mode)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise BadInput("image: cannot decode as PNG or JPEG") from None
    resize = int(preprocess.get("resize", DEFAULTS.resize))
    crop = int(preprocess.get("crop", DEFAULTS.crop))
    scale = resize / min(image.width, image.height)
    size = (max(crop, round(image.width * scale)), max(crop, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    return torch.from_numpy(np.array(image, dtype=np.uint8).reshape(1, crop, crop, in_channels))


def json_to_tensor(inputs: Any, in_channels: int, max_elements: int) -> Tensor:
    """A nested list ``[C, H, W]`` or ``[N, C, H, W]``, already preprocessed."""
    try:
        tensor = torch.tensor(inputs, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise BadInput("inputs: must be a rectangular nested list of numbers") from None
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[1] != in_channels:
        raise BadInput(
            f"inputs: expected [C, H, W] or [N, C, H, W] with C={in_channels}, got {list(tensor.shape)}"
        )
    if tensor.numel() > max_elements or min(tensor.shape[2:]) < 8:
        raise BadInput(
            f"inputs: shape {list(tensor.shape)} out of range (at least 8x8, at most {max_elements} values)"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise BadInput("inputs: contain NaN or Inf")
    return tensor
