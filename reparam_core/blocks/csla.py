"""CSLA / LinearAddBlock (RepOpt-VGG, Ding et al., ICLR 2023): kxk and 1x1 convs (+ identity), each
multiplied by a per-channel scale, summed, then one BN.

In CSLA form (``trainable_scales=False``) the kxk and 1x1 scales are constants and the identity
scale trains, as in DingXiaoH/RepOptimizers: that is the structure whose training a RepOptimizer
reproduces on a plain conv. With ``trainable_scales=True`` every scale trains: the hyper-search
("-hs") model whose learned scales parametrise the RepOptimizer. Fused kernel:
``s*K + t*pad(K1) (+ diag(u))``, then the BN folded in.
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import Tensor, nn

from ..fusion.transforms import KernelBias, add_centred_, add_identity_, scale
from .base import ALL_ROWS, ConvOptions, ReparamBlock, register_block
from .branches import bn_kernel_bias


class ChannelScale(nn.Module):
    """Multiply each channel by ``weight``; frozen (constant) unless ``trainable``."""

    def __init__(self, channels: int, init: float, trainable: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)), requires_grad=trainable)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.reshape(1, -1, 1, 1)


@register_block
class LinearAddBlock(ReparamBlock):
    family = "csla"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        conv_scale_init: float = 1.0,
        trainable_scales: bool = False,
        use_identity: bool = True,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        s, d, g, mode = self.stride, self.dilation, self.groups, self.padding_mode
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, s, self.padding, d, g, bias=False, padding_mode=mode
        )
        self.scale_conv = ChannelScale(out_channels, conv_scale_init, trainable_scales)
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, s, 0, 1, g, bias=False, padding_mode=mode)
        self.scale_1x1 = ChannelScale(out_channels, conv_scale_init, trainable_scales)
        identity = use_identity and self.has_identity
        self.scale_identity = ChannelScale(out_channels, 1.0, trainable=True) if identity else None
        self.bn = nn.BatchNorm2d(out_channels)

    def linear_forward(self, x: Tensor) -> Tensor:
        out = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if self.scale_identity is not None:
            out = out + self.scale_identity(x)
        return self.bn(out)

    def linear_kernel(self, rows: slice = ALL_ROWS) -> Tensor:
        """The kernel of the scaled sum before the BN: ``s*K + t*pad(K1) (+ diag(u))`` (rows ``rows``)."""
        kernel = scale(self.conv.weight[rows], self.scale_conv.weight[rows])
        add_centred_(kernel, scale(self.conv_1x1.weight[rows], self.scale_1x1.weight[rows]))
        if self.scale_identity is not None:
            add_identity_(kernel, self.scale_identity.weight[rows], first_row=rows.start or 0)
        return kernel

    def kernel_bias_rows(self, rows: slice) -> KernelBias:
        return bn_kernel_bias(self.linear_kernel(rows), self.bn, rows=rows)
