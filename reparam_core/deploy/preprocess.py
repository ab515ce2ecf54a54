"""Image preprocessing of a served net: the spec's resize/crop/normalisation, ImageNet by default.

:class:`Preprocess` is part of the training spec (how ``/predict`` turns an image into the model's
input). :class:`PixelNormaliser` does the last step where the model runs: ``uint8`` pixels
``[N, H, W, C]`` -> ``(p / 255 - mean) / std`` as float32 ``[N, C, H, W]``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocess(BaseModel):
    """How /predict turns an image into the model's input (ImageNet defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int = Field(default=256, gt=0, description="shorter side before the centre crop")
    crop: int = Field(default=224, gt=0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class PixelNormaliser:
    """``uint8`` pixels ``[N, H, W, C]`` -> ``(p / 255 - mean) / std`` as float32 ``[N, C, H, W]``
    (one multiply-add per value; the result is a channels_last view of the pixel layout)."""

    def __init__(self, preprocess: dict[str, Any], channels: int, device: torch.device | str = "cpu") -> None:
        mean = torch.tensor(preprocess.get("mean", IMAGENET_MEAN)[:channels], dtype=torch.float64)
        std = torch.tensor(preprocess.get("std", IMAGENET_STD)[:channels], dtype=torch.float64)
        self.gain = (1.0 / (255.0 * std)).float().to(device)
        self.offset = (-mean / std).float().to(device)

    def __call__(self, pixels: Tensor) -> Tensor:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[3] != self.gain.numel():
            expected = f"uint8 pixels [N, H, W, {self.gain.numel()}]"
            raise ValueError(f"expected {expected}, got {pixels.dtype} {list(pixels.shape)}")
        pixels = pixels.to(self.gain.device, non_blocking=True)
        return torch.addcmul(self.offset, pixels, self.gain).permute(0, 3, 1, 2)
