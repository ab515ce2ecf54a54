"""Helpers shared by the tests: realistic statistics, so zero-initialised branches are exercised."""

from __future__ import annotations

import torch
from torch import nn

from reparam_core.blocks.csla import ChannelScale


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN realistic eval statistics and move every zero/constant-initialised parameter.

    BN: mean N(0, 0.5), var U(0.05, 2), gamma U(0.2, 1.5), beta N(0, 0.2) (REPARAM_FACTS.md).
    OREPA ``vector``, identity-based 1x1 deltas and CSLA scales get random values too.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):  # deterministic; the scale of torch's default init
                fan_in = module.weight[0].numel()
                module.weight.copy_(draw(module.weight.shape) / (3 * fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(draw(module.bias.shape) * 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(draw(torch.Size([n])) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=gen, dtype=torch.float64) * 1.95 + 0.05)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(n, generator=gen, dtype=torch.float64) * 1.3 + 0.2)
                    module.bias.copy_(draw(torch.Size([n])) * 0.2)
            if isinstance(module, ChannelScale):
                module.weight.copy_(draw(module.weight.shape) * 0.5 + 1.0)
        for name, param in model.named_parameters():
            if name.endswith("vector") or "idconv1" in name:
                param.copy_(draw(param.shape) * 0.5)
    return model
