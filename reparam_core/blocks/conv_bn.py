"""Plain conv + BN: a VGG layer, and the RepOpt-VGG "target" block (trained plain, fused by BN folding)."""

from __future__ import annotations

from typing import Unpack

from torch import Tensor, nn

from ..fusion.transforms import KernelBias
from .base import ConvOptions, ReparamBlock, register_block
from .branches import bn_kernel_bias


@register_block
class ConvBNBlock(ReparamBlock):
    """``act(se(BN(conv(x))))``; fuses by folding the BN."""

    family = "conv_bn"

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, **options: Unpack[ConvOptions]
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=False,
            padding_mode=self.padding_mode,
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def linear_forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def kernel_bias_rows(self, rows: slice) -> KernelBias:
        return bn_kernel_bias(self.conv.weight[rows], self.bn, rows=rows)
