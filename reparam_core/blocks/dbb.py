"""Diverse Branch Block (Ding et al., CVPR 2021): kxk, 1x1, 1x1->avg and 1x1->kxk branches, each with BN.

Sequential branches pad *between* their two stages with :class:`BNAndPad`, so the composed kxk
kernel is exact at the borders too. Average pooling has no dilated form, so dilation is refused.
"""

from __future__ import annotations

from typing import Unpack, cast

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError
from ..fusion.transforms import KernelBias, add_branches, avg_pool_kernel, merge_sequential, pad_to
from .base import ConvOptions, ReparamBlock, register_block
from .branches import BNAndPad, ConvBN, IdentityConv1x1, bn_kernel_bias


@register_block
class DiverseBranchBlock(ReparamBlock):
    family = "dbb"
    kernel_sizes = (3, 5, 7)
    supports_dilation = False
    row_separable = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        internal_channels: int | None = None,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        k, p, s, g, mode = kernel_size, self.padding, self.stride, self.groups, self.padding_mode
        self.depthwise = in_channels == out_channels == g
        self.origin = ConvBN(in_channels, out_channels, k, s, p, 1, g, mode)
        self.conv_1x1 = None if self.depthwise else ConvBN(in_channels, out_channels, 1, s, 0, 1, g, mode)
        # Average branch: (1x1 conv -> BN-and-pad ->) kxk average pool -> BN.
        self.avg_conv = (
            None if self.depthwise else nn.Conv2d(in_channels, out_channels, 1, groups=g, bias=False)
        )
        self.avg_bn_pad = None if self.depthwise else BNAndPad(out_channels, p, mode)
        self.avg_pool = nn.AvgPool2d(k, s, padding=0)
        self.avg_bn = nn.BatchNorm2d(out_channels)
        # Sequential branch: 1x1 (identity-initialised when widths match) -> BN-and-pad -> kxk -> BN.
        internal = internal_channels or (in_channels if not self.depthwise else 2 * in_channels)
        if internal % g:
            raise SpecError(f"dbb: internal_channels={internal} must be divisible by groups={g}")
        self.seq_conv1: nn.Module = (
            IdentityConv1x1(in_channels, g)
            if internal == in_channels
            else nn.Conv2d(in_channels, internal, 1, groups=g, bias=False)
        )
        self.seq_bn_pad = BNAndPad(internal, p, mode)
        self.seq_conv2 = nn.Conv2d(internal, out_channels, k, s, padding=0, groups=g, bias=False)
        self.seq_bn = nn.BatchNorm2d(out_channels)

    def _avg_input(self, x: Tensor) -> Tensor:
        if self.avg_conv is not None and self.avg_bn_pad is not None:
            return self.avg_bn_pad(self.avg_conv(x))
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, [self.padding] * 4, mode=mode)

    def linear_forward(self, x: Tensor) -> Tensor:
        out = self.origin(x) + self.avg_bn(self.avg_pool(self._avg_input(x)))
        if self.conv_1x1 is not None:
            out = out + self.conv_1x1(x)
        return out + self.seq_bn(self.seq_conv2(self.seq_bn_pad(self.seq_conv1(x))))

    def _seq_conv1_kernel(self) -> Tensor:
        conv1 = self.seq_conv1
        return conv1.kernel() if isinstance(conv1, IdentityConv1x1) else cast(Tensor, conv1.weight)

    def equivalent_kernel_bias(self) -> KernelBias:
        k, g = self.kernel_size, self.groups
        size = (k, k)
        branches = [self.origin.kernel_bias()]
        if self.conv_1x1 is not None:
            kernel, bias = self.conv_1x1.kernel_bias()
            branches.append((pad_to(kernel, size), bias))
        pool = avg_pool_kernel(self.out_channels, g, k, like=self.origin.conv.weight)
        if self.avg_conv is not None and self.avg_bn_pad is not None:
            first = bn_kernel_bias(self.avg_conv.weight, self.avg_bn_pad.bn)
            pool, pool_bias = merge_sequential(first, (pool, first[1].new_zeros(self.out_channels)), g)
            branches.append(bn_kernel_bias(pool, self.avg_bn, pool_bias))
        else:
            branches.append(bn_kernel_bias(pool, self.avg_bn))
        first = bn_kernel_bias(self._seq_conv1_kernel(), self.seq_bn_pad.bn)
        second = (self.seq_conv2.weight, first[1].new_zeros(self.out_channels))
        seq_kernel, seq_bias = merge_sequential(first, second, g)
        branches.append(bn_kernel_bias(seq_kernel, self.seq_bn, seq_bias))
        return add_branches(*branches)
