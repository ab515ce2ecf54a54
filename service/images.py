"""Turning request bodies into model input: images preprocessed as torchvision does it, or JSON tensors.

An image is identified by its content (PNG, JPEG or WebP; Pillow's other formats are never
handed to it), then resized and centre-cropped exactly as torchvision's ``Resize`` +
``CenterCrop`` do on the PIL image. Sizes are checked from the header, before any pixel is
decoded: the source image's and that of the resized image Pillow would allocate.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from reparam_core.deploy import Interpolation, Preprocess

from .errors import BadInput, UnsupportedMedia

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")  # labels /predict takes; the content decides
SIGNATURES = {  # Pillow format -> how its files begin
    "PNG": lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "JPEG": lambda head: head.startswith(b"\xff\xd8\xff"),
    "WEBP": lambda head: head.startswith(b"RIFF") and head[8:12] == b"WEBP",
}
URL_SAFE = str.maketrans("-_", "+/")
RESAMPLING = {name: Image.Resampling[name.upper()] for name in get_args(Interpolation)}
DEFAULTS = Preprocess().model_dump()  # the spec's preprocessing defaults (ImageNet's)
MAX_PIXELS = 64_000_000  # a source image at most (refused before decoding)
MAX_RESIZED_PIXELS = 2**25  # the resized image, and Pillow's intermediate, at most (refused before decoding)


def decode_base64_image(text: str) -> bytes:
    """URL-safe base64 (the standard alphabet's ``+/`` taken too), padding optional."""
    try:
        return base64.b64decode(text.translate(URL_SAFE) + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("image: not URL-safe base64") from None


def open_image(data: bytes) -> tuple[Image.Image, str]:
    """The image and its format, its header read: 415 for what is not PNG, JPEG or WebP."""
    fmt = next((name for name, matches in SIGNATURES.items() if matches(data[:12])), None)
    if fmt is None:
        raise UnsupportedMedia(
            "image: the content is not PNG, JPEG or WebP; send one of those (as image/png, image/jpeg "
            "or image/webp)"
        )
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise BadInput(f"image: over the limit of {MAX_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):  # ValueError: e.g. a PNG text chunk bomb
        raise BadInput(f"image: cannot decode as {fmt}") from None
    if image.width * image.height > MAX_PIXELS:
        raise BadInput(
            f"image of {image.width}x{image.height} pixels is over the limit of {MAX_PIXELS} pixels"
        )
    return image, fmt


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """torchvision's ``Resize(resize)``: the shorter side to ``resize``, the longer one scaled and
    truncated."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def crop_start(size: int, crop: int) -> int:
    """torchvision's ``CenterCrop``: rounded half to even, or zero-padded when the side is short."""
    return round((size - crop) / 2.0) if size >= crop else -((crop - size) // 2)


def image_to_pixels(data: bytes, preprocess: dict[str, Any], in_channels: int, draft: bool = False) -> Tensor:
    """One image as :func:`images_to_pixels` makes it: uint8 pixels ``[1, S, S, C]``."""
    return images_to_pixels([data], preprocess, in_channels, draft)


def images_to_pixels(
    images: Sequence[bytes], preprocess: dict[str, Any], in_channels: int, draft: bool = False
) -> Tensor:
    """Decode PNG/JPEG/WebP, then torchvision's ``Resize(resize, interpolation)`` +
    ``CenterCrop(crop)``: uint8 pixels ``[N, S, S, C]``, each image written straight into the batch.

    The served net normalises them (``reparam_core.deploy.PixelNormaliser``): four times fewer
    bytes travel to the backend than as float input. ``preprocess`` is a stored spec's: one stored
    before ``interpolation`` existed is bilinear. ``draft``: a JPEG at least twice the resized size
    is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (``REPARAM_JPEG_DRAFT``; faster, not pixel-exact:
    docs/performance.md gives the difference)."""
    settings = {**DEFAULTS, **preprocess}
    crop = int(settings["crop"])
    batch = torch.empty((len(images), crop, crop, in_channels), dtype=torch.uint8)
    for row, data in zip(batch.numpy(), images, strict=True):
        _decode_into(row, data, settings, draft)
    return batch


def _decode_into(out: np.ndarray, data: bytes, settings: dict[str, Any], draft: bool) -> None:
    image, fmt = open_image(data)
    resize, crop = int(settings["resize"]), int(settings["crop"])
    width, height = resized_size(image.width, image.height, resize)
    if max(width * max(height, image.height), crop * crop) > MAX_RESIZED_PIXELS:
        raise BadInput(
            f"image of {image.width}x{image.height} pixels: its resize to {width}x{height} is over the limit "
            f"of {MAX_RESIZED_PIXELS} pixels; send it cropped to a less extreme aspect ratio"
        )
    x, y = _Axis(width, crop), _Axis(height, crop)
    mode = "RGB" if out.shape[2] == 3 else "L"
    try:
        if draft and fmt == "JPEG":
            image.draft(image.mode, (width, height))  # libjpeg's scale keeps at least (width, height)
        image.load()
        image = image if image.mode == mode else image.convert(mode)
    except (OSError, ValueError):
        raise BadInput(f"image: cannot decode as {fmt}") from None
    image = image.resize((width, height), RESAMPLING[settings["interpolation"]])
    pixels = np.asarray(image).reshape(height, width, out.shape[2])
    if x.padded or y.padded:
        out[...] = 0  # torchvision's CenterCrop pads an image smaller than the crop with zeros
    out[y.target, x.target] = pixels[y.source, x.source]


class _Axis:
    """One side of the resized image (``size`` pixels) centre-cropped to ``crop``: which of its
    pixels (``source``) go where in the crop (``target``)."""

    def __init__(self, size: int, crop: int) -> None:
        start = crop_start(size, crop)
        self.padded = start < 0
        if self.padded:
            self.source, self.target = slice(0, size), slice(-start, -start + size)
        else:
            self.source, self.target = slice(start, start + crop), slice(0, crop)


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
