"""A tensor as one convolution of a source tensor, and the exact compositions of such maps.

``AffineMap`` says ``value[y] = sum_o K[o] * pad(source)[y * stride + o] + bias`` with a grouped,
undilated kernel, ``pad`` adding ``padding`` per side in ``mode``. Maps combine at the coarsest
common grouping (gcd of the groups), so depthwise chains stay depthwise. Every merge below is
exact or refused with the reason; ``Refused`` carries it to the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..fusion.transforms import dilate, merge_sequential

PAD_TOLERANCE = 1e-12  # a pad value "equals" the map's response to zero input up to fp64 rounding


class Refused(Exception):
    """A merge that would not be exact; ``kind`` is the category shown in the report."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class AffineMap:
    source: object  # the fx Node this map reads
    kernel: Tensor  # [out, in / groups, kh, kw], float64, undilated
    bias: Tensor  # [out], float64
    groups: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    mode: str = "zeros"
    convs: int = 0  # convolutions merged into this map (for the report)
    ops: int = 0  # graph ops merged into this map
    is_source: bool = False  # the source itself (composition with it is just the next op)

    @staticmethod
    def identity(source: object, channels: int) -> AffineMap:
        ones = torch.ones((channels, 1, 1, 1), dtype=torch.float64)
        return AffineMap(
            source, ones, torch.zeros(channels, dtype=torch.float64), groups=channels, is_source=True
        )

    def regrouped(self, groups: int) -> AffineMap:
        return replace(self, kernel=regroup(self.kernel, self.groups, groups), groups=groups)

    @property
    def pointwise(self) -> bool:
        return self.kernel.shape[-2:] == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    @property
    def is_identity(self) -> bool:
        channels = self.kernel.shape[0]
        if not self.pointwise or bool((self.bias != 0).any()):
            return False
        dense = regroup(self.kernel, self.groups, 1)[:, :, 0, 0]
        return dense.shape[1] == channels and torch.equal(dense, torch.eye(channels, dtype=dense.dtype))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        kh, kw = self.kernel.shape[-2:]
        (sh, sw), (ph, pw) = self.stride, self.padding
        return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1


def regroup(kernel: Tensor, groups: int, coarser: int) -> Tensor:
    """A kernel of ``groups`` groups as one of ``coarser`` groups (``coarser`` divides ``groups``):
    each coarse block holds ``groups / coarser`` fine blocks on its diagonal, zeros elsewhere."""
    if groups == coarser:
        return kernel
    fold = groups // coarser
    out, per_group, kh, kw = kernel.shape
    rows = out // groups
    fine = kernel.reshape(coarser, fold, rows, per_group, kh, kw)
    wide = kernel.new_zeros((coarser, fold, rows, fold, per_group, kh, kw))
    index = torch.arange(fold)
    wide[:, index, :, index] = fine.permute(1, 0, 2, 3, 4, 5)
    return wide.reshape(out, fold * per_group, kh, kw)


def compose_conv(
    inner: AffineMap,
    kernel: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    mode: str,
) -> AffineMap:
    """``conv(inner)``: exact when the conv's padding reads what ``inner`` would produce there."""
    if padding != (0, 0):
        if not inner.pointwise:
            raise Refused("border effects", "a padded conv after a spatial or padded linear map")
        if mode == "zeros" and bool((inner.bias != 0).any()):
            raise Refused("border effects", "zero padding after a map with a bias (BN-then-pad pads with it)")
    if inner.is_source:  # nothing to compose: the conv itself
        dense = dilate(kernel.double(), dilation)
        zero = dense.new_zeros(dense.shape[0])
        return AffineMap(
            inner.source,
            dense,
            bias.double() if bias is not None else zero,
            groups,
            stride,
            padding,
            mode,
            convs=1,
            ops=1,
        )
    common = math.gcd(inner.groups, groups)
    inner = inner.regrouped(common)
    outer = dilate(regroup(kernel.double(), groups, common), dilation)
    outer_bias = bias.double() if bias is not None else outer.new_zeros(outer.shape[0])
    spread = dilate(outer, inner.stride)  # the conv's taps, in units of the inner map's input
    merged_kernel, merged_bias = merge_sequential((inner.kernel, inner.bias), (spread, outer_bias), common)
    sa = inner.stride
    return AffineMap(
        inner.source,
        merged_kernel,
        merged_bias,
        common,
        stride=(sa[0] * stride[0], sa[1] * stride[1]),
        padding=(padding[0] * sa[0] + inner.padding[0], padding[1] * sa[1] + inner.padding[1]),
        mode=mode if padding != (0, 0) else inner.mode,
        convs=inner.convs + 1,
        ops=inner.ops + 1,
    )


def scale_channels(inner: AffineMap, factors: Tensor, shift: Tensor | None = None) -> AffineMap:
    """``inner * factors + shift`` per output channel (eval BN, constant scales, constant adds)."""
    f = factors.double().reshape(-1)
    f = f.expand(inner.kernel.shape[0]) if f.numel() == 1 else f
    bias = inner.bias * f
    if shift is not None:
        s = shift.double().reshape(-1)
        bias = bias + (s.expand(bias.shape[0]) if s.numel() == 1 else s)
    kernel = inner.kernel * f.reshape(-1, 1, 1, 1)
    return replace(inner, kernel=kernel, bias=bias, ops=inner.ops + 1, is_source=False)


def add(a: AffineMap, b: AffineMap, sign: float = 1.0) -> AffineMap:
    """``a + sign * b`` for two maps of the same source."""
    common = math.gcd(a.groups, b.groups)
    a, b = a.regrouped(common), b.regrouped(common)
    padding, mode, (ka, kb) = _common_frame([a, b], "adds")
    return AffineMap(
        a.source,
        ka + sign * kb,
        a.bias + sign * b.bias,
        common,
        a.stride,
        padding,
        mode,
        a.convs + b.convs,
        a.ops + b.ops + 1,
    )


def concat(maps: list[AffineMap]) -> AffineMap:
    """Channel concatenation of maps of one source (dense: groups do not survive stacking)."""
    maps = [m.regrouped(1) for m in maps]
    padding, mode, kernels = _common_frame(maps, "concatenates")
    return AffineMap(
        maps[0].source,
        torch.cat(kernels),
        torch.cat([m.bias for m in maps]),
        1,
        maps[0].stride,
        padding,
        mode,
        sum(m.convs for m in maps),
        sum(m.ops for m in maps) + 1,
    )


def _common_frame(maps: list[AffineMap], verb: str) -> tuple[tuple[int, int], str, list[Tensor]]:
    """Every kernel placed so that equal indices read equal source offsets (padding = the largest)."""
    first = maps[0]
    if any(m.source is not first.source for m in maps):
        raise Refused("different inputs", f"{verb} tensors that are not linear in the same input")
    if any(m.stride != first.stride for m in maps):
        raise Refused("border effects", f"{verb} maps of different strides")
    modes = {m.mode for m in maps if m.padding != (0, 0)}
    if len(modes) > 1:
        raise Refused("border effects", f"{verb} maps with padding modes {sorted(modes)}")
    ph, pw = max(m.padding[0] for m in maps), max(m.padding[1] for m in maps)
    height = max(ph - m.padding[0] + m.kernel.shape[-2] for m in maps)
    width = max(pw - m.padding[1] + m.kernel.shape[-1] for m in maps)
    placed = []
    for m in maps:
        top, left = ph - m.padding[0], pw - m.padding[1]
        frame = m.kernel.new_zeros((*m.kernel.shape[:2], height, width))
        frame[..., top : top + m.kernel.shape[-2], left : left + m.kernel.shape[-1]] = m.kernel
        placed.append(frame)
    return (ph, pw), (modes.pop() if modes else "zeros"), placed


def pad(inner: AffineMap, amounts: tuple[int, int, int, int], mode: str, value: float) -> AffineMap:
    """``F.pad(inner, (left, right, top, bottom), mode, value)``."""
    left, right, top, bottom = amounts
    if left != right or top != bottom or min(amounts) < 0:
        raise Refused("border effects", f"asymmetric or negative padding {amounts}")
    if not inner.pointwise:
        raise Refused("border effects", "padding after a spatial or padded linear map")
    if mode == "constant":
        scale = max(1.0, float(inner.bias.abs().max()))
        if bool(((inner.bias - value).abs() > PAD_TOLERANCE * scale).any()):
            raise Refused(
                "border effects", "constant padding with a value other than the map's response to zero"
            )
        mode = "zeros"
    return replace(inner, padding=(top, left), mode=mode, ops=inner.ops + 1, is_source=False)


def avg_pool_kernel_depthwise(channels: int, size: tuple[int, int]) -> Tensor:
    """Average pooling as a depthwise kernel (``groups = channels``)."""
    return torch.full((channels, 1, *size), 1.0 / (size[0] * size[1]), dtype=torch.float64)
