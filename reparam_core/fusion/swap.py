"""Replace every re-parameterizable block in any model by its single fused conv."""

from __future__ import annotations

import copy

from torch import nn

from ..blocks.base import ReparamBlock, raise_training
from ..layers import SqueezeExcite


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with each :class:`ReparamBlock`, wherever it is nested, swapped for a fused conv.

    Everything else is left as it is. The input is not modified unless ``inplace=True``; the copy
    never duplicates the training branches. Running it on an already converted model changes
    nothing. Refuses blocks in training mode, where BN uses batch statistics and no fixed conv is
    equivalent.
    """
    blocks = {name: m for name, m in model.named_modules() if isinstance(m, ReparamBlock)}
    for name, block in blocks.items():
        if block.training:
            raise_training(f"block {name or type(model).__name__!r}")
    if isinstance(model, ReparamBlock):
        return model.to_deploy()
    if not inplace:
        memo = {id(block): block.to_deploy() for block in blocks.values()}
        return copy.deepcopy(model, memo)
    for name, block in blocks.items():
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, block.to_deploy())
    return model


def count_convs(model: nn.Module) -> int:
    """Number of ``nn.Conv2d`` modules outside squeeze-excitation (the trunk's convs)."""
    se_convs = {id(c) for m in model.modules() if isinstance(m, SqueezeExcite) for c in m.modules()}
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in se_convs)
