"""Turning request bodies into model input: image decoding + the spec's preprocessing, or JSON tensors."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import BadInput

IMAGE_TYPES = ("image/png", "image/jpeg")
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding


def decode_base64_image(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadInput("image: not URL-safe base64") from None


def image_to_tensor(data: bytes, preprocess: dict[str, Any], in_channels: int) -> Tensor:
    """Decode PNG/JPEG, resize the shorter side, centre-crop, scale to [0, 1], normalise: ``[1, C, S, S]``."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise BadInput(f"image of {image.width}x{image.height} pixels is too large")
        image = image.convert("RGB" if in_channels == 3 else "L")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise BadInput("image: cannot decode as PNG or JPEG") from None
    resize, crop = int(preprocess.get("resize", 256)), int(preprocess.get("crop", 224))
    scale = resize / min(image.width, image.height)
    size = (max(crop, round(image.width * scale)), max(crop, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(crop, crop, in_channels)
    mean = torch.tensor(preprocess.get("mean", (0.485, 0.456, 0.406))[:in_channels], dtype=torch.float64)
    std = torch.tensor(preprocess.get("std", (0.229, 0.224, 0.225))[:in_channels], dtype=torch.float64)
    # (p / 255 - mean) / std as one multiply-add per value; the H, W, C buffer viewed as
    # [1, C, H, W] is already in the channels_last memory format the served nets use.
    gain, offset = (1.0 / (255.0 * std)).float(), (-mean / std).float()
    return torch.addcmul(offset, pixels.float(), gain).permute(2, 0, 1).unsqueeze(0)


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
