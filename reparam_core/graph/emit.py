"""Turning a merged ``AffineMap`` back into the smallest equivalent ``nn.Conv2d``.

The dense kernel is restored to its block-diagonal groups, its dilation and its tightest size,
all exactly (only all-zero taps and blocks are dropped).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from ..deploy.spec import PaddingMode
from .affine import AffineMap


def _trim(kernel: Tensor, padding: list[int]) -> Tensor:
    """Drop all-zero outer rows/columns in pairs (padding shrinks with them)."""
    for axis in (0, 1):
        dim = -2 + axis
        while kernel.shape[dim] > 1 and padding[axis] > 0:
            first, last = kernel.narrow(dim, 0, 1), kernel.narrow(dim, kernel.shape[dim] - 1, 1)
            if bool(first.any()) or bool(last.any()):
                break
            kernel = kernel.narrow(dim, 1, kernel.shape[dim] - 2)
            padding[axis] -= 1
    return kernel


def _dilation(kernel: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The largest dilation whose skipped taps are all zero, per axis."""
    dilation = []
    for axis in (0, 1):
        dim = -2 + axis
        size = kernel.shape[dim]
        used = kernel.abs().sum(dim=tuple(d for d in range(4) if d != kernel.ndim + dim)) != 0
        best = 1
        for d in range(size - 1, 1, -1):
            if (size - 1) % d == 0 and not bool(used[[i for i in range(size) if i % d]].any()):
                best = d
                break
        dilation.append(best)
    dh, dw = dilation
    return kernel[..., ::dh, ::dw], (dh, dw)


def _groups(kernel: Tensor) -> int:
    """The largest number of groups for which every tap outside the diagonal blocks is zero."""
    out, inp = kernel.shape[:2]
    used = kernel.abs().sum(dim=(2, 3)) != 0
    for g in sorted(
        (d for d in range(2, math.gcd(out, inp) + 1) if out % d == 0 and inp % d == 0), reverse=True
    ):
        blocks = used.reshape(g, out // g, g, inp // g).any(dim=(1, 3))
        if not bool((blocks & ~torch.eye(g, dtype=torch.bool)).any()):
            return g
    return 1


def to_conv(merged: AffineMap, dtype: torch.dtype, device: torch.device) -> nn.Conv2d:
    padding = list(merged.padding)
    kernel = _trim(merged.kernel, padding)
    kernel, dilation = _dilation(kernel)
    groups = merged.groups
    if groups == 1:  # a dense kernel can still be block-diagonal (grouped branches summed densely)
        groups = _groups(kernel)
        rows, cols = kernel.shape[0] // groups, kernel.shape[1] // groups
        kernel = torch.cat(
            [kernel[g * rows : (g + 1) * rows, g * cols : (g + 1) * cols] for g in range(groups)]
        )
    out, inp = kernel.shape[0], kernel.shape[1] * groups
    mode = cast(PaddingMode, merged.mode if padding != [0, 0] else "zeros")
    conv = nn.Conv2d(
        inp,
        out,
        (kernel.shape[-2], kernel.shape[-1]),
        stride=merged.stride,
        padding=(padding[0], padding[1]),
        dilation=dilation,
        groups=groups,
        bias=True,
        padding_mode=mode,
        device="meta",
    )
    conv.weight = nn.Parameter(kernel.to(device=device, dtype=dtype).contiguous())
    conv.bias = nn.Parameter(merged.bias.to(device=device, dtype=dtype))
    return conv
