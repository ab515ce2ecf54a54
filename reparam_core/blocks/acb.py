"""Asymmetric Convolution Block (ACNet, Ding et al., ICCV 2019): kxk + kx1 + 1xk, each with BN.

The kx1/1xk branches pad only along their long axis, by the square branch's padding, so their
windows sit on the square kernel's centre column/row. Any padding mode fuses exactly: the
centre row of a square window never reads the rows the square conv pads.
"""

from __future__ import annotations

from typing import Unpack

from torch import Tensor

from ..fusion.transforms import KernelBias, add_centred_
from .base import ConvOptions, ReparamBlock, register_block
from .branches import ConvBN


@register_block
class ACBlock(ReparamBlock):
    family = "acb"
    kernel_sizes = (3, 5, 7)

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, **options: Unpack[ConvOptions]
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        k, p = kernel_size, self.padding
        s, d, g, mode = self.stride, self.dilation, self.groups, self.padding_mode
        self.square = ConvBN(in_channels, out_channels, k, s, p, d, g, mode)
        self.ver = ConvBN(in_channels, out_channels, (k, 1), s, (p, 0), d, g, mode)
        self.hor = ConvBN(in_channels, out_channels, (1, k), s, (0, p), d, g, mode)

    def linear_forward(self, x: Tensor) -> Tensor:
        return self.square(x) + self.ver(x) + self.hor(x)

    def kernel_bias_rows(self, rows: slice) -> KernelBias:
        kernel, bias = self.square.kernel_bias(rows)
        ver_k, ver_b = self.ver.kernel_bias(rows)
        hor_k, hor_b = self.hor.kernel_bias(rows)
        return add_centred_(add_centred_(kernel, ver_k), hor_k), bias + ver_b + hor_b
