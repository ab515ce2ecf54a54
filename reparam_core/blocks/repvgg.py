"""RepVGG block (Ding et al., CVPR 2021): kxk conv-BN + 1x1 conv-BN + identity BN, summed."""

from __future__ import annotations

from typing import Unpack

from torch import Tensor, nn

from ..fusion.transforms import KernelBias
from .base import ConvOptions, ReparamBlock, register_block
from .branches import ConvBN, parallel_forward, parallel_kernel_bias


@register_block
class RepVGGBlock(ReparamBlock):
    """The identity branch exists when ``in == out`` and ``stride == 1`` (unless ``use_identity=False``)."""

    family = "repvgg"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        use_1x1: bool = True,
        use_identity: bool = True,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        s, d, g, mode = self.stride, self.dilation, self.groups, self.padding_mode
        self.conv_kxk = ConvBN(in_channels, out_channels, kernel_size, s, self.padding, d, g, mode)
        self.conv_1x1 = ConvBN(in_channels, out_channels, 1, s, 0, 1, g, mode) if use_1x1 else None
        self.identity = nn.BatchNorm2d(out_channels) if use_identity and self.has_identity else None

    def linear_forward(self, x: Tensor) -> Tensor:
        return parallel_forward(x, [self.conv_kxk], self.conv_1x1, self.identity)

    def kernel_bias_rows(self, rows: slice) -> KernelBias:
        return parallel_kernel_bias([self.conv_kxk], self.conv_1x1, self.identity, rows)
