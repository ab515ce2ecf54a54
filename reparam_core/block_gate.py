"""The gate's per-block float64 checks, run as the training net's own float64 forward reaches each block.

The loaded training net keeps row-separable conv kernels in their checkpoint dtype (see
:mod:`reparam_core.checkpoints.loading`); upcasting a whole 120M-parameter net and fusing a float64
copy of it costs two gigabytes of fresh memory, most of a B3 conversion's time. Here the net runs
through :func:`torch.func.functional_call` with every block's non-float64 tensors swapped for
views of one shared float64 buffer, filled as the forward reaches the block (a pre-hook). As each
block finishes (a post-hook), while its float64 tensors are in the buffer:

- it is fused in float64 (row-separable blocks a block of rows at a time, into a second shared
  buffer), and the stored deploy layer's weights are compared with that, elementwise: each may
  differ from its float64 value by the storage dtype's rounding only (:class:`WeightsReport`);
- the block and its deploy layer (the stored net's own module, given the float64 weights) run on a
  seeded random input of :func:`~reparam_core.probes.block_probe_size` (batch 2 where the block
  pools over the image: SE), bounded by the caller's tolerance.

The forward's result is the float64 training net's output on the whole-net input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from math import inf

import torch
from pydantic import BaseModel
from torch import Tensor, nn
from torch.func import functional_call

from .blocks.base import ReparamBlock
from .equivalence import EquivalenceReport, measure, random_input
from .fusion.row_blocks import CHUNK_BYTES
from .fusion.transforms import KernelBias
from .probes import block_probe_size

POOLING_BATCH = 2  # a block that pools over the image is probed with two samples (pooling must not mix them)
F64 = torch.float64


class WeightsReport(BaseModel):
    """The stored weights of every deploy layer against the float64 fused weights rounded to the
    storage dtype: ``max_rel_error`` is the largest ``|stored - rounded| / max(|rounded|, tiny)``
    over all their elements (``tiny``: the dtype's smallest normal number), ``where`` the layer it
    occurs in. Two float64 computations of a weight may round to neighbouring values, one unit in
    the last place apart: ``tolerance`` is the dtype's machine epsilon (one such unit at 1.0)."""

    where: str | None
    dtype: str
    max_rel_error: float
    tolerance: float
    passed: bool


@dataclass
class BlockChecks:
    output: Tensor  # the float64 training net's output on the whole-net input
    fp64: list[EquivalenceReport]  # one per block, in forward order
    weights: WeightsReport


def check_blocks(model: nn.Module, stored: nn.Module, x: Tensor, tolerance: float, seed: int) -> BlockChecks:
    """Run ``model`` in float64 on ``x`` (float64), checking every block against the layer of the
    same name in ``stored`` as it goes (see the module docstring)."""
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ReparamBlock)}
    swapped, fills = _float64_views(model, blocks, x.device)
    fused_buffer = torch.empty(max(map(_fused_numel, blocks.values()), default=0), dtype=F64, device=x.device)
    dtype = next(stored.parameters()).dtype
    reports: list[EquivalenceReport] = []
    worst: tuple[float, str | None] = (0.0, None)

    def fill(module: nn.Module, _: object) -> None:
        for view, original in fills[names[id(module)]]:
            view.copy_(original)

    def check(module: nn.Module, _: object, __: object) -> None:
        nonlocal worst
        name = names[id(module)]
        block = blocks[name]
        layer = stored.get_submodule(name)
        exact = _fused_float64(block, fused_buffer)
        error = _weights_error(layer, exact, dtype)
        worst = max(worst, (error, name), key=lambda item: item[0])
        reports.append(_probe(block, layer, exact, name, tolerance, seed + 1 + order[name]))

    names = {id(block): name for name, block in blocks.items()}
    order = {name: i for i, name in enumerate(blocks)}
    handles = [
        h
        for b in blocks.values()
        for h in (b.register_forward_pre_hook(fill), b.register_forward_hook(check))
    ]
    try:
        output = functional_call(model, swapped, (x,))
    finally:
        for handle in handles:
            handle.remove()
    bound = torch.finfo(dtype).eps
    weights = WeightsReport(
        where=worst[1],
        dtype=str(dtype).removeprefix("torch."),
        max_rel_error=worst[0],
        tolerance=bound,
        passed=worst[0] <= bound,
    )
    return BlockChecks(output, reports, weights)


def _float_tensors(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    return (
        (n, t) for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_floating_point()
    )


def _float64_views(
    model: nn.Module, blocks: dict[str, ReparamBlock], device: torch.device
) -> tuple[dict[str, Tensor], dict[str, list[tuple[Tensor, Tensor]]]]:
    """Float64 stand-ins for every non-float64 tensor of ``model``: blocks' as views of one shared
    buffer (with the copies that fill them), the rest as float64 copies (heads: small)."""
    sizes = [sum(t.numel() for _, t in _float_tensors(b) if t.dtype != F64) for b in blocks.values()]
    buffer = torch.empty(max(sizes, default=0), dtype=F64, device=device)
    swapped: dict[str, Tensor] = {}
    fills: dict[str, list[tuple[Tensor, Tensor]]] = {}
    for name, block in blocks.items():
        offset, fills[name] = 0, []
        for key, tensor in _float_tensors(block):
            if tensor.dtype != F64:
                view = buffer[offset : offset + tensor.numel()].view(tensor.shape)
                offset += tensor.numel()
                fills[name].append((view, tensor))
                swapped[f"{name}.{key}" if name else key] = view
    for key, tensor in _float_tensors(model):
        if tensor.dtype != F64 and key not in swapped:
            swapped[key] = tensor.to(F64)
    return swapped, fills


def _fused_numel(block: ReparamBlock) -> int:
    if not block.row_separable:
        return 0
    return block.out_channels * (block.in_channels // block.groups * block.kernel_size**2 + 1)


def _row_chunks(block: ReparamBlock) -> list[slice]:
    per_row = (block.in_channels // block.groups) * block.kernel_size**2
    step = max(1, CHUNK_BYTES // (8 * per_row))
    return [slice(s, min(block.out_channels, s + step)) for s in range(0, block.out_channels, step)]


def _fused_float64(block: ReparamBlock, buffer: Tensor) -> dict[str, Tensor]:
    """The deploy layer's tensors in float64, from ``block`` (whose tensors are float64 here)."""
    kernel: Tensor
    bias: Tensor
    if block.row_separable:
        k, out = block.kernel_size, block.out_channels
        size = out * (block.in_channels // block.groups) * k * k
        kernel = buffer[:size].view(out, block.in_channels // block.groups, k, k)
        bias = buffer[size : size + out]
        for rows in _row_chunks(block):
            part: KernelBias = block.kernel_bias_rows(rows)
            kernel[rows], bias[rows] = part
    else:
        kernel, bias = block.equivalent_kernel_bias()
    exact = {"conv.weight": kernel, "conv.bias": bias}
    if block.se is not None:
        se = block.se.state_dict().items()  # floating tensors only (not a BN's num_batches_tracked)
        exact.update({f"se.{k}": v for k, v in se if v.is_floating_point()})
    return exact


def _rounding_error(stored: Tensor, exact: Tensor) -> float:
    """Largest ``|stored - round(exact)| / max(|round(exact)|, tiny)``: 0 when ``stored`` is ``exact``
    correctly rounded to its dtype, one unit in the last place at most when the two float64 paths
    to it differ by a float64 rounding, no more when they agree."""
    rounded = exact.to(device=stored.device, dtype=stored.dtype)
    if torch.equal(stored, rounded):  # the usual case, one pass
        return 0.0
    tiny = torch.finfo(stored.dtype).tiny
    error = ((stored - rounded).abs() / rounded.abs().clamp_min(tiny)).max().item()
    return error if error == error else inf  # NaN: as far off as it gets


def _weights_error(layer: nn.Module, exact: dict[str, Tensor], dtype: torch.dtype) -> float:
    """Largest elementwise relative difference of ``layer``'s stored tensors from ``exact``, a block
    of rows at a time (the float64 temporaries stay small)."""
    state = {k: v for k, v in layer.state_dict().items() if v.is_floating_point()}
    if set(state) != set(exact) or any(v.shape != exact[k].shape for k, v in state.items()):
        return inf
    step = max(1, CHUNK_BYTES // (8 * exact["conv.weight"][0].numel()))
    return max(
        _rounding_error(stored[start : start + step], exact[key][start : start + step])
        for key, stored in state.items()
        for start in range(0, stored.shape[0], step)
    )


def _probe(
    block: ReparamBlock, layer: nn.Module, exact: dict[str, Tensor], name: str, tolerance: float, seed: int
) -> EquivalenceReport:
    """``block`` against ``layer`` with the float64 weights on a seeded probe input."""
    h, w = block_probe_size(block.layer_spec())
    batch = POOLING_BATCH if block.se is not None else 1
    shape = (batch, block.in_channels, h, w)
    x = random_input(shape, seed).to(exact["conv.weight"].device)
    reference = block.forward(x)  # not block(x): its hooks are running this check
    try:
        candidate = functional_call(layer, exact, (x,))
    except RuntimeError as exc:  # a deploy layer that cannot run on this input is not equivalent
        return measure(reference, x.new_full((0,), inf), shape, F64, x.device, tolerance, name).model_copy(
            update={"error": str(exc).splitlines()[0][:200]}
        )
    return measure(reference, candidate, shape, F64, x.device, tolerance, name)
