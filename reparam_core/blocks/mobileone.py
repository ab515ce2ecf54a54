"""MobileOne block (Vasu et al., CVPR 2023): k parallel kxk conv-BN branches, a 1x1 conv-BN "scale"
branch and a BN skip, summed. MobileOne nets pair a depthwise kxk block with a pointwise 1x1 block."""

from __future__ import annotations

from typing import Unpack, cast

from torch import Tensor, nn

from ..errors import SpecError
from ..fusion.transforms import KernelBias
from .base import ConvOptions, ReparamBlock, register_block
from .branches import ConvBN, parallel_forward, parallel_kernel_bias


@register_block
class MobileOneBlock(ReparamBlock):
    family = "mobileone"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        num_branches: int = 1,
        use_scale: bool = True,
        use_identity: bool = True,
        **options: Unpack[ConvOptions],
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        if num_branches < 1:
            raise SpecError(f"mobileone: num_branches={num_branches} must be at least 1")
        s, d, g, mode = self.stride, self.dilation, self.groups, self.padding_mode
        self.conv_kxk = nn.ModuleList(
            ConvBN(in_channels, out_channels, kernel_size, s, self.padding, d, g, mode)
            for _ in range(num_branches)
        )
        has_scale = use_scale and kernel_size > 1
        self.conv_scale = ConvBN(in_channels, out_channels, 1, s, 0, 1, g, mode) if has_scale else None
        self.identity = nn.BatchNorm2d(out_channels) if use_identity and self.has_identity else None

    def linear_forward(self, x: Tensor) -> Tensor:
        return parallel_forward(x, self._branches(), self.conv_scale, self.identity)

    def kernel_bias_rows(self, rows: slice) -> KernelBias:
        return parallel_kernel_bias(self._branches(), self.conv_scale, self.identity, rows)

    def _branches(self) -> list[ConvBN]:
        return [cast(ConvBN, branch) for branch in self.conv_kxk]
