"""Fused deploy weights straight from a loaded training net, without building fp64 copies.

Row-separable blocks (see ``ReparamBlock.row_separable``) are fused a block of output channels at
a time on the CPU: each block of rows is cast once to float64 (small, cache-resident temporaries),
fused there and written into the storage-dtype kernel. This needs the loader's dtype layout:
per-channel tensors already float64, kernels in any dtype. On a GPU every block is fused whole
(launches, not caches, are what costs there) and stays on the device. Other families are fused
on a float64 copy of the block.

The work runs on :data:`~reparam_core.threads.MEMORY_BOUND_THREADS` intra-op threads (restored
afterwards): see :mod:`reparam_core.threads` for why.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..blocks.base import ALL_ROWS, ReparamBlock
from ..threads import intra_op_threads
from .transforms import KernelBias

CHUNK_BYTES = 4 << 20  # float64 temporaries per block of rows (CPU)


def fused_state_dict(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The state dict ``reparameterize(model)`` would have, computed in float64, stored in ``dtype``
    on the model's device."""
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ReparamBlock)}
    state: dict[str, Tensor] = {}
    with torch.no_grad(), intra_op_threads():
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
    device = next(block.parameters()).device
    if device.type != "cpu":
        kernel, bias = block.kernel_bias_rows(ALL_ROWS)
        return kernel.to(dtype), bias.to(dtype)
    out = block.out_channels
    per_row = (block.in_channels // block.groups) * block.kernel_size**2
    step = max(1, CHUNK_BYTES // (8 * per_row))
    kernel = torch.empty(
        (out, block.in_channels // block.groups, block.kernel_size, block.kernel_size), dtype=dtype
    )
    bias = torch.empty(out, dtype=dtype)
    for start in range(0, out, step):
        rows = slice(start, min(out, start + step))
        k, b = block.kernel_bias_rows(rows)
        kernel[rows], bias[rows] = k, b
    return kernel, bias
