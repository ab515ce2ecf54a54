"""Pure tensor transforms that merge linear branches into one convolution.

Every function takes and returns plain tensors, keeps the dtype and device of its inputs and
creates no constant in a fixed dtype (an fp32 ``1/9`` inside an fp64 fusion caps accuracy at
~3e-9). Kernels are ``[out, in/groups, kh, kw]``; biases are ``[out]``. A kernel narrower than its
per-channel factors (fp32 kernels, fp64 BN statistics: the loader's layout) is cast once and then
scaled in one dtype, with the same result bit for bit as type promotion: torch's mixed-dtype
multiply runs several times slower on the CPU.

The names follow what each transform does; the docstrings cite the name used in the DBB paper
(Ding et al., "Diverse Branch Block", CVPR 2021), whose six transforms all blocks compose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KernelBias = tuple[Tensor, Tensor]


def fold_bn(
    kernel: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    eps: float,
    conv_bias: Tensor | None = None,
) -> KernelBias:
    """Fold an eval-mode batch norm into the conv before it (DBB transform I).

    ``t = gamma / sqrt(var + eps)``; ``K' = K * t``; ``b' = beta + (b - mean) * t``.
    ``gamma``/``beta`` are ``None`` for a BN without affine parameters.
    """
    t, shift = bn_scale_shift(running_mean, running_var, gamma, beta, eps)
    if conv_bias is not None:
        shift = shift + conv_bias * t
    return scale(kernel, t), shift


def bn_scale_shift(
    running_mean: Tensor, running_var: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """An eval-mode BN as ``x * t + shift`` per channel."""
    std = (running_var + eps).sqrt()
    t = std.reciprocal() if gamma is None else gamma / std
    shift = -running_mean * t
    return t, (shift + beta if beta is not None else shift)


def add_branches(*branches: KernelBias) -> KernelBias:
    """Sum parallel branches of equal kernel size (DBB transform II)."""
    if not branches:
        raise ValueError("add_branches needs at least one branch")
    kernel, bias = branches[0]
    for k, b in branches[1:]:
        if k.shape != kernel.shape:
            raise ValueError(f"cannot add kernels of shapes {tuple(kernel.shape)} and {tuple(k.shape)}")
        kernel, bias = kernel + k, bias + b
    return kernel, bias


def pad_to(kernel: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad a smaller kernel centred to ``size`` (DBB transform VI; 1xk/kx1 land on the centre line).

    Centred padding keeps the sampling windows aligned only when the small branch's own padding is
    ``p_big - (k_big - k_small) // 2`` per axis, which is how every block here builds it.
    """
    kh, kw = kernel.shape[-2:]
    th, tw = size
    dh, dw = th - kh, tw - kw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(
            f"cannot centre a {kh}x{kw} kernel in {th}x{tw}: sizes must differ by an even amount"
        )
    return F.pad(kernel, [dw // 2, dw // 2, dh // 2, dh // 2])


def add_centred_(kernel: Tensor, small: Tensor) -> Tensor:
    """``kernel += pad_to(small, kernel size)`` in place, without building the padded kernel."""
    kh, kw = kernel.shape[-2:]
    sh, sw = small.shape[-2:]
    dh, dw = kh - sh, kw - sw
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise ValueError(
            f"cannot centre a {sh}x{sw} kernel in {kh}x{kw}: sizes must differ by an even amount"
        )
    kernel[..., dh // 2 : dh // 2 + sh, dw // 2 : dw // 2 + sw] += small
    return kernel


def add_identity_(kernel: Tensor, factors: Tensor, first_row: int = 0) -> Tensor:
    """``kernel += diag(factors)`` as an identity kernel (see :func:`identity_kernel`), in place.

    ``kernel`` may hold only output channels ``first_row, first_row + 1, ...`` of the full kernel.
    """
    rows, per_group, kh, kw = kernel.shape
    local = torch.arange(rows, device=kernel.device)
    columns = (local + first_row) % per_group
    centre_h, centre_w = local.new_tensor(kh // 2), local.new_tensor(kw // 2)
    kernel.index_put_((local, columns, centre_h, centre_w), factors.to(kernel.dtype), accumulate=True)
    return kernel


def identity_kernel(channels: int, groups: int, kernel_size: int, *, like: Tensor) -> Tensor:
    """Kernel of the identity map: ``K[i, i % (C/groups), c, c] = 1`` (works for any groups)."""
    if channels % groups:
        raise ValueError(f"channels {channels} not divisible by groups {groups}")
    per_group = channels // groups
    kernel = like.new_zeros((channels, per_group, kernel_size, kernel_size))
    rows = torch.arange(channels, device=like.device)
    centre = kernel_size // 2
    kernel[rows, rows % per_group, centre, centre] = 1
    return kernel


def avg_pool_kernel(channels: int, groups: int, kernel_size: int, *, like: Tensor) -> Tensor:
    """Average pooling ``k x k`` as a conv: ``1/k^2`` on the per-group diagonal (DBB transform V).

    Equals ``AvgPool2d(k, stride, padding, count_include_pad=True)`` on the same padded input.
    """
    if channels % groups:
        raise ValueError(f"channels {channels} not divisible by groups {groups}")
    per_group = channels // groups
    kernel = like.new_zeros((channels, per_group, kernel_size, kernel_size))
    rows = torch.arange(channels, device=like.device)
    kernel[rows, rows % per_group] = 1
    return kernel / (kernel_size * kernel_size)


def merge_sequential(first: KernelBias, second: KernelBias, groups: int) -> KernelBias:
    """Compose conv ``first`` followed by conv ``second`` into one kernel (DBB transform III).

    The classic case is 1x1 -> kxk; any ``ha x wa`` then ``hb x wb`` (stride 1, dense) composes to
    ``(ha+hb-1) x (wa+wb-1)``. Both convs share ``groups``. The result equals the sequence exactly on
    the interior; at the borders only when the intermediate map is padded with the value the first
    stage produces for a zero input (``first``'s bias), as DBB's BN-then-pad does.
    """
    k1, b1 = first
    k2, b2 = second
    mid, in_per_group = k1.shape[0], k1.shape[1]
    if k2.shape[1] * groups != mid:
        raise ValueError(f"second kernel expects {k2.shape[1] * groups} input channels, first produces {mid}")
    ha, wa = k1.shape[-2:]
    hb, wb = k2.shape[-2:]
    # Full convolution of the two kernels, per group: batch = inputs of a group, channels = mids.
    grouped = k1.reshape(groups, mid // groups, in_per_group, ha, wa)
    stacked = grouped.permute(2, 0, 1, 3, 4).reshape(in_per_group, mid, ha, wa)
    composed = F.conv2d(stacked, k2.flip(-2, -1), padding=(hb - 1, wb - 1), groups=groups)
    kernel = composed.transpose(0, 1).contiguous()
    out = k2.shape[0]
    tap_sums = k2.sum(dim=(2, 3)).reshape(groups, out // groups, mid // groups)
    pushed = torch.einsum("gom,gm->go", tap_sums, b1.reshape(groups, mid // groups)).reshape(out)
    return kernel, b2 + pushed


def dilate(kernel: Tensor, dilation: tuple[int, int]) -> Tensor:
    """The dense kernel of a dilated one: taps ``dilation`` apart with zeros between (exact)."""
    dh, dw = dilation
    if (dh, dw) == (1, 1):
        return kernel
    kh, kw = kernel.shape[-2:]
    dense = kernel.new_zeros((*kernel.shape[:2], (kh - 1) * dh + 1, (kw - 1) * dw + 1))
    dense[..., ::dh, ::dw] = kernel
    return dense


def concat_depth(*branches: KernelBias) -> KernelBias:
    """Stack branches along the output channels (DBB transform IV, depth concatenation)."""
    kernels, biases = zip(*branches, strict=True)
    return torch.cat(kernels, dim=0), torch.cat(biases, dim=0)


def scale(kernel: Tensor, factors: Tensor) -> Tensor:
    """Per-output-channel scale (OREPA linear scaling, CSLA constant scales): ``K * s``.

    Computed in the promoted dtype of the two; a narrower kernel is cast first, never multiplied
    across dtypes (same values, several times faster on the CPU).
    """
    dtype = torch.promote_types(kernel.dtype, factors.dtype)
    column = factors.reshape(-1, 1, 1, 1).to(dtype)
    if kernel.dtype == dtype:
        return kernel * column
    if torch.is_grad_enabled() and (kernel.requires_grad or factors.requires_grad):
        return kernel.to(dtype) * column  # out of place: autograd keeps the cast kernel
    return kernel.to(dtype).mul_(column)  # the cast is a fresh tensor: scale it where it lies
