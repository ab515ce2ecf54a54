"""Asymmetric Convolution Block (ACNet, Ding et al., ICCV 2019): kxk + kx1 + 1xk, each with BN.

The kx1/1xk branches pad only along their long axis, by the square branch's padding, so their
windows sit on the square kernel's centre column/row. Any padding mode fuses exactly: the
centre row of a square window never reads the rows the square conv pads.
"""

from __future__ import annotations

from torch import Tensor

from ..kernels import KernelBias, add_branches, pad_to
from .base import ReparamBlock
from .branches import ConvBN


class ACBlock(ReparamBlock):
    family = "acb"
    kernel_sizes = (3, 5, 7)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, **options: object) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)  # type: ignore[arg-type]
        k, p = kernel_size, self.padding
        s, d, g, mode = self.stride, self.dilation, self.groups, self.padding_mode
        self.square = ConvBN(in_channels, out_channels, k, s, p, d, g, mode)
        self.ver = ConvBN(in_channels, out_channels, (k, 1), s, (p, 0), d, g, mode)
        self.hor = ConvBN(in_channels, out_channels, (1, k), s, (0, p), d, g, mode)

    def linear_forward(self, x: Tensor) -> Tensor:
        return self.square(x) + self.ver(x) + self.hor(x)

    def equivalent_kernel_bias(self) -> KernelBias:
        size = (self.kernel_size, self.kernel_size)
        ver_k, ver_b = self.ver.kernel_bias()
        hor_k, hor_b = self.hor.kernel_bias()
        return add_branches(
            self.square.kernel_bias(), (pad_to(ver_k, size), ver_b), (pad_to(hor_k, size), hor_b)
        )
