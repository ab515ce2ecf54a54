"""OREPA (Hu et al., CVPR 2022): online re-parameterization, as JUGGHM/OREPA_CVPR2022 trains it.

During training the kernel is *generated* from linear branches, each scaled per output channel by
a row of ``vector``; one conv with that kernel runs, then a single BN. Deploy = that BN folded into
the generated kernel. Parameter and buffer names are the official ones, so an official checkpoint
loads as it is, and every generator reproduces the official ``weight_gen`` exactly, including
where it is not the textbook composition:

* ``orepa`` k >= 3 (official ``OREPA``): origin, 1x1 -> average (the *stored* ``weight_orepa_avg_avg``
  buffer), 1x1 x frequency prior (the stored ``weight_orepa_prior``), 1x1 -> kxk (``idconv1`` plus the
  stored identity buffer ``id_tensor``; internal width ``in`` when groups <= 4, else ``2 in``), 1x1
  padded, and depthwise-separable (the point-wise weight viewed ``[out/g, g, in/g, 8]``: fused
  output channel ``c (out/g) + o`` takes point-wise row ``o g + c``).
* ``orepa`` k = 1 (official ``OREPA_1x1``, groups 1): origin plus a two-factor 1x1 product.
* ``orepa_large`` (official ``OREPA_LargeConv``, groups 1): 3x3 generators chained by
  ``conv2d(W.T, W_next, padding=2)``, a cross-correlation (no flip of ``W_next``), as trained.
* ``orepa_vgg`` (official ``RepVGGBlock_OREPA``): a RepVGG block whose 3x3 branch is the
  ``OREPA_3x3_RepVGG`` generator (keys ``weight_rbr_*``) with its own BN, plus 1x1 conv-BN and identity BN.
"""

from __future__ import annotations

import itertools
import math
from typing import Unpack, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fusion.transforms import KernelBias, add_centred_, add_identity_, pad_to, scale
from .base import ConvOptions, ReparamBlock, register_block
from .branches import ConvBN, bn_affine, bn_kernel_bias

EXPAND_RATIO = 8  # depthwise-separable branch: each input channel feeds 8 depthwise maps


def _kaiming(*shape: int) -> nn.Parameter:
    weight = torch.empty(*shape)
    nn.init.kaiming_uniform_(weight, a=0.0)
    return nn.Parameter(weight)


def frequency_prior(out_channels: int, kernel_size: int) -> Tensor:
    """OREPA's fixed prior ``[out, k, k]``: ``cos(pi (h + 1/2) (i + 1) / 3)`` along h for the first
    half of the channels, along w (frequency ``i + 1 - out/2``) for the rest, on the top-left 3x3
    taps. The official code leaves the other taps of a larger kernel uninitialised (whatever a
    checkpoint holds is used); they start at zero here."""
    prior = torch.zeros(out_channels, kernel_size, kernel_size, dtype=torch.float64)
    half = out_channels / 2
    taps = min(3, kernel_size)
    pos = torch.arange(taps, dtype=torch.float64) + 0.5
    for i in range(out_channels):
        if i < half:
            prior[i, :taps, :taps] = torch.cos(math.pi * pos * (i + 1) / 3)[:, None]
        else:
            prior[i, :taps, :taps] = torch.cos(math.pi * pos * (i + 1 - half) / 3)[None, :]
    return prior.to(torch.get_default_dtype())


def identity_rows(rows: int, per_group: int) -> Tensor:
    """The official ``id_tensor``: ``[rows, per_group, 1, 1]`` with a 1 at ``(r, r % per_group)``."""
    ident = torch.zeros(rows, per_group, 1, 1)
    ident[torch.arange(rows), torch.arange(rows) % per_group] = 1
    return ident


def grouped_1x1_then_kxk(first: Tensor, second: Tensor, groups: int) -> Tensor:
    """Kernel of a grouped 1x1 conv ``first`` ``[t, in/g, 1, 1]`` followed by the grouped kxk conv
    ``second`` ``[out, t/g, k, k]`` (the official einsum ``gti,gothw->goihw``)."""
    t, per_group = first.shape[:2]
    out, t_per_group, kh, kw = second.shape
    a = first.reshape(groups, t // groups, per_group)
    b = second.reshape(groups, out // groups, t_per_group, kh, kw)
    return torch.einsum("gti,gothw->goihw", a, b).reshape(out, per_group, kh, kw)


def depthwise_separable(dw: Tensor, pw: Tensor, in_channels: int, groups: int) -> Tensor:
    """The official ``dwsc2full``: depthwise ``dw`` ``[in*e, 1, k, k]`` then grouped point-wise ``pw``
    ``[out, in*e/g, 1, 1]``, with the point-wise rows read as ``[out/g, g, in/g, e]``."""
    expand, k = dw.shape[0] // in_channels, dw.shape[-1]
    out, per_group = pw.shape[0], in_channels // groups
    dw_view = dw.reshape(groups, per_group, expand, k, k)
    pw_view = pw.reshape(out // groups, groups, per_group, expand)
    return torch.einsum("cgthw,ocgt->coghw", dw_view, pw_view).reshape(out, per_group, k, k)


def add_orepa_parameters(module: nn.Module, in_channels: int, out_channels: int, k: int, groups: int) -> None:
    """Register the official ``OREPA`` generator's parameters and buffers (k >= 3) on ``module``."""
    per_group = in_channels // groups
    internal = in_channels if groups <= 4 else 2 * in_channels
    module.weight_orepa_origin = _kaiming(out_channels, per_group, k, k)
    module.weight_orepa_avg_conv = _kaiming(out_channels, per_group, 1, 1)
    module.weight_orepa_pfir_conv = _kaiming(out_channels, per_group, 1, 1)
    module.register_buffer("weight_orepa_avg_avg", torch.full((k, k), 1.0 / k / k))
    module.weight_orepa_1x1 = _kaiming(out_channels, per_group, 1, 1)
    module.weight_orepa_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(internal, per_group, 1, 1))
    module.register_buffer("id_tensor", identity_rows(internal, per_group))
    module.weight_orepa_1x1_kxk_conv2 = _kaiming(out_channels, internal // groups, k, k)
    module.weight_orepa_gconv_dw = _kaiming(in_channels * EXPAND_RATIO, 1, k, k)
    module.weight_orepa_gconv_pw = _kaiming(out_channels, in_channels * EXPAND_RATIO // groups, 1, 1)
    module.register_buffer("weight_orepa_prior", frequency_prior(out_channels, k))
    init = torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5])[:, None]
    module.vector = nn.Parameter(init.repeat(1, out_channels))


def orepa_kernel(module: nn.Module, in_channels: int, groups: int) -> Tensor:
    """The official ``OREPA.weight_gen`` from the parameters :func:`add_orepa_parameters` registered."""
    p = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    k, v = p["weight_orepa_origin"].shape[-1], p["vector"]
    first = p["weight_orepa_1x1_kxk_idconv1"] + p["id_tensor"]
    dws = depthwise_separable(p["weight_orepa_gconv_dw"], p["weight_orepa_gconv_pw"], in_channels, groups)
    branches = (
        scale(p["weight_orepa_origin"], v[0]),
        scale(p["weight_orepa_avg_conv"] * p["weight_orepa_avg_avg"], v[1]),
        scale(pad_to(p["weight_orepa_1x1"], (k, k)), v[4]),
        scale(grouped_1x1_then_kxk(first, p["weight_orepa_1x1_kxk_conv2"], groups), v[3]),
        scale(p["weight_orepa_pfir_conv"] * p["weight_orepa_prior"][:, None], v[2]),
        scale(dws, v[5]),
    )
    kernel = branches[0]
    for branch in branches[1:]:
        kernel = kernel + branch
    return kernel


def add_or1x1_parameters(module: nn.Module, in_channels: int, out_channels: int) -> None:
    """Register the official ``OREPA_1x1`` parameters on ``module`` (groups 1)."""
    module.weight_or1x1_origin = _kaiming(out_channels, in_channels, 1, 1)
    if out_channels > in_channels:
        module.weight_or1x1_l2i_conv1 = nn.Parameter(torch.eye(in_channels)[:, :, None, None])
        module.weight_or1x1_l2i_conv2 = _kaiming(out_channels, in_channels, 1, 1)
    else:
        module.weight_or1x1_l2i_conv1 = _kaiming(out_channels, in_channels, 1, 1)
        module.weight_or1x1_l2i_conv2 = nn.Parameter(torch.eye(out_channels)[:, :, None, None])
    module.vector = nn.Parameter(torch.tensor([1.0, 0.5])[:, None].repeat(1, out_channels))


def or1x1_kernel(module: nn.Module) -> Tensor:
    """The official ``OREPA_1x1.weight_gen``: ``origin v0 + (conv2 @ conv1) v1``."""
    p = dict(module.named_parameters(recurse=False))
    product = torch.einsum("tihw,othw->oihw", p["weight_or1x1_l2i_conv1"], p["weight_or1x1_l2i_conv2"])
    return scale(p["weight_or1x1_origin"], p["vector"][0]) + scale(product, p["vector"][1])


class OREPAGenerator(nn.Module):
    """A weight-only official ``OREPA`` (k >= 3): what ``OREPA_LargeConv`` chains."""

    def __init__(self, in_channels: int, out_channels: int, k: int, groups: int) -> None:
        super().__init__()
        self.in_channels, self.groups = in_channels, groups
        add_orepa_parameters(self, in_channels, out_channels, k, groups)

    def forward(self) -> Tensor:
        return orepa_kernel(self, self.in_channels, self.groups)


@register_block
class OREPABlock(ReparamBlock):
    """One conv with the generated kernel, then BN (then SE/activation). The generator's parameters
    sit on the block itself, named as in the official ``OREPA`` / ``OREPA_1x1`` modules."""

    family = "orepa"
    row_separable = False

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, **options: Unpack[ConvOptions]
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        if kernel_size > 1:
            add_orepa_parameters(self, in_channels, out_channels, kernel_size, self.groups)
        else:
            add_or1x1_parameters(self, in_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)

    @classmethod
    def unsupported(cls, kernel_size: int, groups: int) -> str | None:
        if kernel_size == 1 and groups != 1:
            return f"kernel_size=1 takes groups=1 (official OREPA_1x1), not {groups}"
        return None

    def weight_gen(self) -> Tensor:
        """The generated kernel ``[out, in/groups, k, k]``, exactly as the official module computes it."""
        if self.kernel_size == 1:
            return or1x1_kernel(self)
        return orepa_kernel(self, self.in_channels, self.groups)

    def linear_forward(self, x: Tensor) -> Tensor:
        return self.bn(_conv(x, self.weight_gen(), self))

    def equivalent_kernel_bias(self) -> KernelBias:
        return bn_kernel_bias(self.weight_gen(), self.bn)


@register_block
class OREPALargeBlock(ReparamBlock):
    """The official ``OREPA_LargeConv`` (k = 5, 7; groups 1): ``(k-1)/2`` 3x3 generators ``weight0``,
    ``weight1``, ... chained by cross-correlation, one conv with the result, then BN."""

    family = "orepa_large"
    kernel_sizes = (5, 7)
    row_separable = False

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 5, **options: Unpack[ConvOptions]
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        widths = [in_channels] + [out_channels] * ((kernel_size - 1) // 2)
        for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
            self.add_module(f"weight{i}", OREPAGenerator(cin, cout, 3, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    @classmethod
    def unsupported(cls, kernel_size: int, groups: int) -> str | None:
        return None if groups == 1 else f"groups={groups} not supported (official OREPA_LargeConv: groups=1)"

    def weight_gen(self) -> Tensor:
        kernel = cast(Tensor, self.get_submodule("weight0")()).transpose(0, 1)
        for i in range(1, (self.kernel_size - 1) // 2):
            kernel = F.conv2d(kernel, self.get_submodule(f"weight{i}")(), padding=2)
        return kernel.transpose(0, 1)

    def linear_forward(self, x: Tensor) -> Tensor:
        return self.bn(_conv(x, self.weight_gen(), self))

    def equivalent_kernel_bias(self) -> KernelBias:
        return bn_kernel_bias(self.weight_gen(), self.bn)


class OREPAVGGDense(nn.Module):
    """The official ``OREPA_3x3_RepVGG``: a 3x3 generator (origin, 1x1 -> average, 1x1 x prior,
    1x1 -> 3x3, dense depthwise-separable) and its own BN. ``vector`` has a sixth, unused row when
    the block has an identity branch, as in the official module."""

    def __init__(self, in_channels: int, out_channels: int, has_identity: bool) -> None:
        super().__init__()
        k = 3
        self.weight_rbr_origin = _kaiming(out_channels, in_channels, k, k)
        self.weight_rbr_avg_conv = _kaiming(out_channels, in_channels, 1, 1)
        self.weight_rbr_pfir_conv = _kaiming(out_channels, in_channels, 1, 1)
        self.register_buffer("weight_rbr_avg_avg", torch.full((k, k), 1.0 / k / k))
        self.weight_rbr_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(in_channels, in_channels, 1, 1))
        self.register_buffer("id_tensor", identity_rows(in_channels, in_channels))
        self.weight_rbr_1x1_kxk_conv2 = _kaiming(out_channels, in_channels, k, k)
        self.weight_rbr_gconv_dw = _kaiming(in_channels * EXPAND_RATIO, 1, k, k)
        self.weight_rbr_gconv_pw = _kaiming(out_channels, in_channels * EXPAND_RATIO, 1, 1)
        rows = [0.25, 0.25, 0.0, 0.5, 0.5] + ([0.0] if has_identity else [])
        self.vector = nn.Parameter(torch.tensor(rows)[:, None].repeat(1, out_channels))
        self.bn = nn.BatchNorm2d(out_channels)
        self.register_buffer("weight_rbr_prior", frequency_prior(out_channels, k))

    def weight_gen(self) -> Tensor:
        v = self.vector
        first = self.weight_rbr_1x1_kxk_idconv1 + cast(Tensor, self.id_tensor)
        in_channels = first.shape[0]
        kernel = scale(self.weight_rbr_origin, v[0])
        kernel = kernel + scale(self.weight_rbr_avg_conv * cast(Tensor, self.weight_rbr_avg_avg), v[1])
        kernel = kernel + scale(grouped_1x1_then_kxk(first, self.weight_rbr_1x1_kxk_conv2, 1), v[3])
        kernel = kernel + scale(
            self.weight_rbr_pfir_conv * cast(Tensor, self.weight_rbr_prior)[:, None], v[2]
        )
        dense = depthwise_separable(self.weight_rbr_gconv_dw, self.weight_rbr_gconv_pw, in_channels, 1)
        return kernel + scale(dense, v[4])


@register_block
class OREPAVGGBlock(ReparamBlock):
    """The official ``RepVGGBlock_OREPA`` (OREPA-VGG): ``OREPA_3x3_RepVGG`` + 1x1 conv-BN + identity
    BN, summed (3x3, groups 1, no dilation: what the official block supports)."""

    family = "orepa_vgg"
    kernel_sizes = (3,)
    supports_dilation = False
    row_separable = False

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, **options: Unpack[ConvOptions]
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **options)
        s, mode = self.stride, self.padding_mode
        self.conv_kxk = OREPAVGGDense(in_channels, out_channels, self.has_identity)
        self.conv_1x1 = ConvBN(in_channels, out_channels, 1, s, 0, 1, 1, mode)
        self.identity = nn.BatchNorm2d(out_channels) if self.has_identity else None

    @classmethod
    def unsupported(cls, kernel_size: int, groups: int) -> str | None:
        return None if groups == 1 else f"groups={groups} not supported (official OREPA-VGG: groups=1)"

    def linear_forward(self, x: Tensor) -> Tensor:
        out = self.conv_kxk.bn(_conv(x, self.conv_kxk.weight_gen(), self)) + self.conv_1x1(x)
        return out + self.identity(x) if self.identity is not None else out

    def equivalent_kernel_bias(self) -> KernelBias:
        kernel, bias = bn_kernel_bias(self.conv_kxk.weight_gen(), self.conv_kxk.bn)
        k1, b1 = self.conv_1x1.kernel_bias()
        kernel, bias = add_centred_(kernel, k1), bias + b1
        if self.identity is not None:
            factor, shift = bn_affine(self.identity)
            kernel, bias = add_identity_(kernel, factor), bias + shift
        return kernel, bias


def _conv(x: Tensor, kernel: Tensor, block: ReparamBlock) -> Tensor:
    """The block's conv with a generated kernel (non-zero padding modes pad explicitly)."""
    padding = block.padding
    if block.padding_mode != "zeros":
        x = F.pad(x, [padding] * 4, mode=block.padding_mode)
        padding = 0
    return F.conv2d(x, kernel, None, block.stride, padding, block.dilation, block.groups)
