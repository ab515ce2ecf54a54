"""RepOpt-VGG scales: where they come from, and what they mean for the plain net.

A CSLA block computes ``BN(s * conv_kxk(x) + t * conv_1x1(x) + u * x)`` with per-channel constant
scales ``s`` and ``t`` (``u``, the identity scale, trains). The scales are learned once by a
hyper-search model (every scale trainable: ``block: csla`` with ``trainable_scales``) and read
from its checkpoint (:func:`extract_scales`, ours or the official layout). Given them:

* :func:`plain_init` is the paper's initialisation: the plain kernel ``s*W3 + t*pad(W1) + u*I``
  equal to the CSLA block's, for fresh (or given) ``W3``, ``W1``;
* :func:`grad_multipliers` is the update rule: the fused kernel's gradient times
  ``|s|^p`` everywhere, plus ``|t|^p`` at the centre tap, plus 1 on the identity's diagonal centre
  (per group), ``p = 2`` for SGD-type and ``p = 1`` for Adam-type optimizers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..blocks import ConvBNBlock, LinearAddBlock
from ..checkpoints import identify_format, read_checkpoint
from ..deploy.artifacts import write_file_atomically
from ..errors import SpecError
from ..fusion.transforms import add_centred_, add_identity_, scale

SCALE_KEY = re.compile(r"^(?P<block>.+)\.scale_(?P<kind>conv|1x1|identity)\.weight$")
Scales = dict[str, dict[str, Tensor]]  # block name -> {"conv": s, "1x1": t[, "identity": u]}


def extract_scales(checkpoint: str | Path | dict[str, Tensor]) -> Scales:
    """The per-block scales of a hyper-search checkpoint (any layout the converter reads; the
    official scales files, which hold only ``stageN[.i].scale_*.weight``, included)."""
    state = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint).state
    scales: Scales = {}
    for key, value in identify_format(state).apply(state).items():
        match = SCALE_KEY.match(key)
        if match:
            scales.setdefault(match["block"], {})[match["kind"]] = value.detach().double()
    if not scales:
        raise SpecError("no scale_conv / scale_1x1 / scale_identity weights in the checkpoint")
    incomplete = [block for block, found in scales.items() if not {"conv", "1x1"} <= found.keys()]
    if incomplete:
        raise SpecError(f"scales without both scale_conv and scale_1x1: {', '.join(incomplete[:8])}")
    return scales


def save_scales(scales: Scales, path: str | Path) -> None:
    """Write scales as safetensors (``{block}.scale_{conv,1x1,identity}.weight``)."""
    flat = {
        f"{block}.scale_{kind}.weight": v.contiguous()
        for block, kinds in scales.items()
        for kind, v in kinds.items()
    }
    write_file_atomically(path, lambda tmp: save_file(flat, str(tmp)))


def scales_of(model: nn.Module) -> Scales:
    """The scales held by the CSLA blocks of ``model`` (a CSLA or hyper-search net)."""
    return extract_scales(model.state_dict())


def _plain_blocks(model: nn.Module, scales: Scales) -> dict[str, ConvBNBlock]:
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ConvBNBlock)}
    missing = sorted(set(blocks) - set(scales))
    extra = sorted(set(scales) - set(blocks))
    if missing or extra:
        raise SpecError(
            f"scales do not fit the plain net: blocks without scales {missing[:8]}, "
            f"scales without blocks {extra[:8]}"
        )
    for name, block in blocks.items():
        if scales[name]["conv"].shape != (block.out_channels,):
            raise SpecError(
                f"{name}: {scales[name]['conv'].shape[0]} scales for {block.out_channels} channels"
            )
        if ("identity" in scales[name]) != block.has_identity:
            raise SpecError(
                f"{name}: the identity scale does not fit the block (identity branch: {block.has_identity})"
            )
    return blocks


def grad_multipliers(model: nn.Module, scales: Scales, power: int = 2) -> dict[nn.Parameter, Tensor]:
    """Per conv weight of the plain RepOpt-VGG ``model`` (``conv_bn`` blocks), the tensor its
    gradient (``power=2``, SGD-type) or its normalised update (``power=1``, Adam-type) is
    multiplied by, in the weight's dtype and device."""
    multipliers: dict[nn.Parameter, Tensor] = {}
    for name, block in _plain_blocks(model, scales).items():
        weight = cast(nn.Parameter, block.conv.weight)
        found = scales[name]
        mult = torch.zeros(weight.shape, dtype=torch.float64)
        mult += (found["conv"].abs() ** power).reshape(-1, 1, 1, 1)
        add_centred_(
            mult, (found["1x1"].abs() ** power).reshape(-1, 1, 1, 1).expand(-1, mult.shape[1], 1, 1).clone()
        )
        if "identity" in found:
            add_identity_(mult, torch.ones(mult.shape[0], dtype=torch.float64))
        multipliers[weight] = mult.to(dtype=weight.dtype, device=weight.device)
    return multipliers


def plain_init(model: nn.Module, scales: Scales, *, seed: int = 0) -> nn.Module:
    """The paper's initialisation of a plain RepOpt-VGG ``model``, in place: each conv weight
    becomes ``s*W3 + t*pad(W1) + u*I`` for freshly drawn ``W3``, ``W1`` (PyTorch's default conv
    init), i.e. what the CSLA block it stands for computes at initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, block in _plain_blocks(model, scales).items():
            weight = block.conv.weight
            found = {k: v.to(torch.float64) for k, v in scales[name].items()}
            w3 = default_conv_init(weight.shape, generator)
            w1 = default_conv_init((*weight.shape[:2], 1, 1), generator)
            kernel = add_centred_(scale(w3, found["conv"]), scale(w1, found["1x1"]))
            if "identity" in found:
                add_identity_(kernel, found["identity"])
            weight.copy_(kernel)
    return model


def plain_state_from_csla(csla: nn.Module) -> dict[str, Tensor]:
    """The state dict of the plain net equal to a CSLA net: every CSLA block's pre-BN kernel as the
    plain block's ``conv.weight``, everything else (BNs, head) as it is."""
    state: dict[str, Tensor] = {}
    blocks = {name: m for name, m in csla.named_modules() if isinstance(m, LinearAddBlock)}
    prefixes = tuple(f"{name}." for name in blocks)
    with torch.no_grad():
        for name, block in blocks.items():
            state[f"{name}.conv.weight"] = block.linear_kernel().detach().clone()
            state.update({f"{name}.bn.{k}": v.detach().clone() for k, v in block.bn.state_dict().items()})
        for key, value in csla.state_dict().items():
            if not key.startswith(prefixes):
                state[key] = value.detach().clone()
    return state


def default_conv_init(shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> Tensor:
    """``nn.Conv2d``'s default weight init (kaiming uniform, a = sqrt(5)), from ``generator``."""
    fan_in = math.prod(shape[1:])
    bound = 1.0 / math.sqrt(fan_in)  # = gain * sqrt(3 / fan_in) with gain sqrt(2 / (1 + 5))
    return (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1) * bound
