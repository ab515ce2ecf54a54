"""Linear branch modules that block families are made of (no activation inside)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..deploy.spec import PaddingMode
from ..fusion.transforms import (
    KernelBias,
    add_centred_,
    add_identity_,
    bn_scale_shift,
    fold_bn,
    identity_kernel,
)
from .base import ALL_ROWS


def _bn_rows(bn: nn.BatchNorm2d, rows: slice) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, float]:
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats is required
    gamma = bn.weight[rows] if bn.weight is not None else None
    beta = bn.bias[rows] if bn.bias is not None else None
    return bn.running_mean[rows], bn.running_var[rows], gamma, beta, bn.eps


def bn_affine(bn: nn.BatchNorm2d, rows: slice = ALL_ROWS) -> tuple[Tensor, Tensor]:
    """An eval-mode ``BatchNorm2d`` (its channels ``rows``) as per-channel ``(scale, shift)``."""
    return bn_scale_shift(*_bn_rows(bn, rows))


def bn_kernel_bias(
    kernel: Tensor, bn: nn.BatchNorm2d, conv_bias: Tensor | None = None, rows: slice = ALL_ROWS
) -> KernelBias:
    """Fold an eval-mode ``BatchNorm2d`` (channels ``rows``) into ``kernel`` (``fold_bn``)."""
    return fold_bn(kernel, *_bn_rows(bn, rows), conv_bias=conv_bias)


class ConvBN(nn.Module):
    """``Conv2d(bias=False)`` then ``BatchNorm2d``; rectangular kernels allowed (ACB's 1xk / kx1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        groups: int = 1,
        padding_mode: PaddingMode = "zeros",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
            padding_mode=padding_mode,
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def kernel_bias(self, rows: slice = ALL_ROWS) -> KernelBias:
        return bn_kernel_bias(self.conv.weight[rows], self.bn, rows=rows)


class BNAndPad(nn.Module):
    """BatchNorm, then padding that keeps a following conv fusable at the borders (DBB's BNAndPadLayer).

    With ``zeros`` padding the border is filled with ``BN(0)`` per channel, the value the
    preceding 1x1 conv + BN would produce on a zero-padded input. Other padding modes commute with
    the per-pixel affine map, so they pad the BN output with the same mode.
    """

    def __init__(self, num_features: int, pad: int, padding_mode: PaddingMode = "zeros") -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad = pad
        self.padding_mode = padding_mode

    def zero_response(self) -> Tensor:
        """``BN(0)`` per channel with the running statistics (detached, as in DBB)."""
        _, shift = bn_affine(self.bn)
        return shift.detach()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn(x)
        if self.pad == 0:
            return out
        border = [self.pad] * 4
        if self.padding_mode == "zeros":
            value = self.zero_response().reshape(1, -1, 1, 1)
            return F.pad(out - value, border) + value
        return F.pad(out, border, mode=self.padding_mode)


class IdentityConv1x1(nn.Module):
    """A 1x1 conv whose kernel is ``identity + weight`` with ``weight`` starting at zero (DBB's idconv1)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(channels, channels // groups, 1, 1))

    def kernel(self) -> Tensor:
        return self.weight + identity_kernel(self.weight.shape[0], self.groups, 1, like=self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), groups=self.groups)


def parallel_kernel_bias(
    kxk: list[ConvBN],
    conv_1x1: ConvBN | None,
    identity: nn.BatchNorm2d | None,
    rows: slice = ALL_ROWS,
) -> KernelBias:
    """Sum of kxk conv-BN branches, optional 1x1 conv-BN and optional identity BN (RepVGG, MobileOne).

    Accumulates in place into the first branch's freshly folded kernel: the small branches are
    added on the centre taps, never materialised as full kxk kernels.
    """
    kernel, bias = kxk[0].kernel_bias(rows)
    for branch in kxk[1:]:
        k, b = branch.kernel_bias(rows)
        kernel, bias = kernel.add_(k), bias + b
    if conv_1x1 is not None:
        k, b = conv_1x1.kernel_bias(rows)
        kernel, bias = add_centred_(kernel, k), bias + b
    if identity is not None:
        scale, shift = bn_affine(identity, rows)
        first = rows.start or 0
        kernel, bias = add_identity_(kernel, scale, first_row=first), bias + shift
    return kernel, bias


def parallel_forward(
    x: Tensor, kxk: list[ConvBN], conv_1x1: ConvBN | None, identity: nn.BatchNorm2d | None
) -> Tensor:
    """Training-form forward matching :func:`parallel_kernel_bias`."""
    out = kxk[0](x)
    for branch in kxk[1:]:
        out = out + branch(x)
    if conv_1x1 is not None:
        out = out + conv_1x1(x)
    if identity is not None:
        out = out + identity(x)
    return out
