"""OREPA (Hu et al., CVPR 2022): online re-parameterization.

During training the kernel is *generated* from six linear branches, each scaled per output
channel by a row of ``vector`` (OREPA's linear scaling replacing per-branch BN); one conv with
that kernel runs, then a single BN. Deploy = fold that BN into the generated kernel. Variants:
``orepa`` (kxk; k=1 uses the 1x1 generator) and ``orepa_large`` (a kxk kernel composed from
stacked 3x3 generators). Parameter names follow the reference implementation.
"""

from __future__ import annotations

import itertools
import math
from typing import Unpack, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fusion.transforms import KernelBias, identity_kernel, merge_sequential, pad_to, scale
from .base import ConvOptions, ReparamBlock, register_block
from .branches import bn_kernel_bias


def frequency_prior(out_channels: int, kernel_size: int, *, like: Tensor) -> Tensor:
    """OREPA's fixed DCT-like prior ``[out, k, k]``: cosines along h for the first half, along w after."""
    k = kernel_size
    pos = torch.arange(k, dtype=like.dtype, device=like.device) + 0.5
    half = out_channels / 2
    rows = []
    for i in range(out_channels):
        freq = (i + 1) if i < half else (i + 1 - half)
        wave = torch.cos(math.pi * pos * freq / k)
        rows.append(wave[:, None].expand(k, k) if i < half else wave[None, :].expand(k, k))
    return torch.stack(rows)


def _compose(first: Tensor, second: Tensor, groups: int) -> Tensor:
    """Kernel of conv ``first`` followed by conv ``second`` (both bias-free, same groups)."""
    zeros = first.new_zeros(first.shape[0])
    kernel, _ = merge_sequential((first, zeros), (second, second.new_zeros(second.shape[0])), groups)
    return kernel


def _kaiming(*shape: int) -> nn.Parameter:
    weight = torch.empty(*shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.Parameter(weight)


class _SeqBranch(nn.Module):
    """The 1x1 -> kxk weight branch shared by both generators (identity-based when widths match)."""

    def __init__(self, in_channels: int, internal: int, out_channels: int, k: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        per_group = in_channels // groups
        if internal == in_channels:
            self.weight_orepa_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(in_channels, per_group, 1, 1))
        else:
            self.weight_orepa_1x1_kxk_conv1 = _kaiming(internal, per_group, 1, 1)
        self.weight_orepa_1x1_kxk_conv2 = _kaiming(out_channels, internal // groups, k, k)

    def first_kernel(self) -> Tensor:
        idconv = getattr(self, "weight_orepa_1x1_kxk_idconv1", None)
        if idconv is None:
            return cast(Tensor, self.weight_orepa_1x1_kxk_conv1)
        return idconv + identity_kernel(idconv.shape[0], self.groups, 1, like=idconv)

    def kernel(self) -> Tensor:
        return _compose(self.first_kernel(), self.weight_orepa_1x1_kxk_conv2, self.groups)


class OREPAKernel(nn.Module):
    """Generates a kxk kernel from origin, avg, prior, 1x1, 1x1->kxk and depthwise-separable branches."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        k: int,
        groups: int,
        internal_channels: int | None = None,
        expand_ratio: int = 8,
    ) -> None:
        super().__init__()
        self.k, self.groups, self.expand_ratio = k, groups, expand_ratio
        per_group = in_channels // groups
        self.weight_orepa_origin = _kaiming(out_channels, per_group, k, k)
        self.weight_orepa_avg_conv = _kaiming(out_channels, per_group, 1, 1)
        self.weight_orepa_pfir_conv = _kaiming(out_channels, per_group, 1, 1)
        # A buffer, as in the reference code: a checkpoint's prior is used as trained.
        prior = frequency_prior(out_channels, k, like=torch.empty(0, dtype=torch.float64))
        self.register_buffer("weight_orepa_prior", prior.to(torch.get_default_dtype()))
        self.weight_orepa_1x1 = _kaiming(out_channels, per_group, 1, 1)
        internal = internal_channels or (in_channels if groups <= 4 else 2 * in_channels)
        self.seq = _SeqBranch(in_channels, internal, out_channels, k, groups)
        self.weight_orepa_gconv_dw = _kaiming(in_channels * expand_ratio, 1, k, k)
        self.weight_orepa_gconv_pw = _kaiming(out_channels, in_channels * expand_ratio // groups, 1, 1)
        self.vector = nn.Parameter(
            torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5])[:, None].repeat(1, out_channels)
        )

    def _dw_separable(self) -> Tensor:
        """Depthwise kxk (each input to ``expand_ratio`` maps) then grouped pointwise, as one kernel."""
        g, e, k = self.groups, self.expand_ratio, self.k
        out = self.weight_orepa_gconv_pw.shape[0]
        per_group = self.weight_orepa_origin.shape[1]
        dw = self.weight_orepa_gconv_dw.reshape(g, per_group, e, k, k)
        pw = self.weight_orepa_gconv_pw.reshape(g, out // g, per_group, e)
        return torch.einsum("goie,giehw->goihw", pw, dw).reshape(out, per_group, k, k)

    def forward(self) -> Tensor:
        k = self.k
        w = self.weight_orepa_origin
        avg = self.weight_orepa_avg_conv * w.new_ones((k, k)) / (k * k)
        prior = self.weight_orepa_pfir_conv * cast(Tensor, self.weight_orepa_prior)[:, None]
        branches = (
            w,
            avg,
            prior,
            self.seq.kernel(),
            pad_to(self.weight_orepa_1x1, (k, k)),
            self._dw_separable(),
        )
        kernel = scale(branches[0], self.vector[0])
        for row, branch in zip(self.vector[1:], branches[1:], strict=True):
            kernel = kernel + scale(branch, row)
        return kernel


class OREPA1x1Kernel(nn.Module):
    """The 1x1 generator: origin 1x1 plus a 1x1 -> 1x1 sequential branch, each channel-scaled."""

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, internal_channels: int | None = None
    ):
        super().__init__()
        per_group = in_channels // groups
        self.weight_orepa_origin = _kaiming(out_channels, per_group, 1, 1)
        internal = internal_channels or (in_channels if groups <= 4 else 2 * in_channels)
        self.seq = _SeqBranch(in_channels, internal, out_channels, 1, groups)
        self.vector = nn.Parameter(torch.tensor([1.0, 0.5])[:, None].repeat(1, out_channels))

    def forward(self) -> Tensor:
        return scale(self.weight_orepa_origin, self.vector[0]) + scale(self.seq.kernel(), self.vector[1])


@register_block
class OREPABlock(ReparamBlock):
    """One conv with the generated kernel, then BN (then SE/activation)."""

    family = "orepa"
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
        self.generator = self._make_generator(internal_channels)
        self.bn = nn.BatchNorm2d(out_channels)

    def _make_generator(self, internal_channels: int | None) -> nn.Module:
        if self.kernel_size == 1:
            return OREPA1x1Kernel(self.in_channels, self.out_channels, self.groups, internal_channels)
        return OREPAKernel(
            self.in_channels, self.out_channels, self.kernel_size, self.groups, internal_channels
        )

    def weight_gen(self) -> Tensor:
        return cast(Tensor, self.generator())

    def linear_forward(self, x: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, [self.padding] * 4, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        out = F.conv2d(x, self.weight_gen(), None, self.stride, padding, self.dilation, self.groups)
        return self.bn(out)

    def equivalent_kernel_bias(self) -> KernelBias:
        return bn_kernel_bias(self.weight_gen(), self.bn)


class LargeKernelGenerator(nn.Module):
    """A kxk kernel composed from ``(k-1)/2`` stacked 3x3 OREPA generators (exact sequential composition)."""

    def __init__(self, in_channels: int, out_channels: int, k: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        widths = [in_channels] + [out_channels] * ((k - 1) // 2)
        self.layers = nn.ModuleList(
            OREPAKernel(cin, cout, 3, groups) for cin, cout in itertools.pairwise(widths)
        )

    def forward(self) -> Tensor:
        kernel = cast(Tensor, self.layers[0]())
        for layer in self.layers[1:]:
            kernel = _compose(kernel, layer(), self.groups)
        return kernel


@register_block
class OREPALargeBlock(OREPABlock):
    """OREPA's large-kernel variant (k = 5, 7): the generated kernel is a stack of 3x3 kernels."""

    family = "orepa_large"
    kernel_sizes = (5, 7)

    def _make_generator(self, internal_channels: int | None) -> nn.Module:
        return LargeKernelGenerator(self.in_channels, self.out_channels, self.kernel_size, self.groups)
