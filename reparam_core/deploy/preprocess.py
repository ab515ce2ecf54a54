"""Image preprocessing of a served net: the spec's resize/crop/normalisation, ImageNet by default.

:class:`Preprocess` is part of the training spec: how ``/predict`` turns an image into the model's
input, as a torchvision/timm eval transform does it on the PIL image: ``Resize(resize,
interpolation)`` (shorter side), ``CenterCrop(crop)``, ``ToTensor``, ``Normalize(mean, std)``.
``resize`` is given, or derived as timm does: ``floor(crop / crop_pct)``. :class:`PixelNormaliser`
does the last step where the model runs: ``uint8`` pixels ``[N, H, W, C]`` -> ``(p / 255 - mean) /
std`` as float32 ``[N, C, H, W]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # timm's: 224 / 0.875 = 256
MAX_SIDE = 2048  # resize and crop at most (a 2048x2048 crop is 12 MiB of RGB pixels)
Interpolation = Literal["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"]  # Pillow's filters


class Preprocess(BaseModel):
    """How /predict turns an image into the model's input, as torchvision's ``Resize`` +
    ``CenterCrop`` + ``Normalize`` do (defaults: ImageNet's ``Resize(256)``, ``CenterCrop(224)``,
    bilinear). ``resize`` is filled in from ``crop_pct`` when not given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int | None = Field(
        default=None, gt=0, le=MAX_SIDE, description="shorter side before the centre crop"
    )
    crop: int = Field(default=224, gt=0, le=MAX_SIDE, description="side of the square centre crop")
    crop_pct: float | None = Field(
        default=None, gt=0, le=1, description="timm's: resize = floor(crop / crop_pct); 0.875 by default"
    )
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @model_validator(mode="after")
    def _resolve_resize(self) -> Preprocess:
        resize = self.resize
        if resize is None:
            crop_pct = DEFAULT_CROP_PCT if self.crop_pct is None else self.crop_pct
            resize = math.floor(self.crop / crop_pct)
            if resize > MAX_SIDE:
                raise ValueError(f"resize = floor(crop / crop_pct) = {resize} is over {MAX_SIDE}")
            object.__setattr__(self, "resize", resize)  # frozen: filled in once, while validating
            object.__setattr__(self, "crop_pct", crop_pct)
        elif self.crop_pct is not None and math.floor(self.crop / self.crop_pct) != resize:
            implied = math.floor(self.crop / self.crop_pct)
            raise ValueError(
                f"resize {resize} disagrees with crop_pct {self.crop_pct} "
                f"(floor({self.crop} / {self.crop_pct}) = {implied}): give one of them"
            )
        if self.crop > resize:
            raise ValueError(f"crop {self.crop} is larger than resize {resize}: the crop must fit")
        if not all(math.isfinite(m) for m in self.mean) or not all(0 < s < math.inf for s in self.std):
            raise ValueError(f"mean {self.mean} must be finite and std {self.std} positive and finite")
        return self


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
