"""Fused deploy weights straight from a loaded training net, without building fp64 copies.

Row-separable blocks (see ``ReparamBlock.row_separable``) are fused a block of output channels at
a time: each block of rows is computed in float64 (small, cache-resident temporaries) and written
into the storage-dtype kernel. This needs the loader's dtype layout: per-channel tensors already
float64, kernels in any dtype (type promotion then computes in float64). Other families are fused
on a float64 copy of the block.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..blocks.base import ReparamBlock
from .transforms import KernelBias

CHUNK_BYTES = 4 << 20  # float64 temporaries per block of rows


def fused_state_dict(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The state dict ``reparameterize(model)`` would have, computed in float64, stored in ``dtype``."""
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ReparamBlock)}
    state: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, block in blocks.items():
            kernel, bias = _fuse_block(block, dtype)
            state[f"{name}.conv.weight"], state[f"{name}.conv.bias"] = kernel, bias
            if block.se is not None:
                state.update({f"{name}.se.{k}": _cast(v, dtype) for k, v in block.se.state_dict().items()})
        prefixes = tuple(f"{name}." for name in blocks)
        for key, value in model.state_dict().items():
            if not key.startswith(prefixes):
                state[key] = _cast(value, dtype)
    return state


def _cast(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _fuse_block(block: ReparamBlock, dtype: torch.dtype) -> KernelBias:
    if not block.row_separable:
        kernel, bias = copy.deepcopy(block).double().equivalent_kernel_bias()
        return kernel.to(dtype), bias.to(dtype)
    out = block.out_channels
    per_row = (block.in_channels // block.groups) * block.kernel_size**2
    step = max(1, CHUNK_BYTES // (8 * per_row))
    device = next(block.parameters()).device
    kernel = torch.empty(
        (out, block.in_channels // block.groups, block.kernel_size, block.kernel_size),
        dtype=dtype,
        device=device,
    )
    bias = torch.empty(out, dtype=dtype, device=device)
    for start in range(0, out, step):
        rows = slice(start, min(out, start + step))
        k, b = block.kernel_bias_rows(rows)
        kernel[rows], bias[rows] = k, b
    return kernel, bias
