"""Seeded float64 parameters for the official-code re-implementations: BN statistics as after
training (never the identity initialisation) and scaled normal tensors."""

from __future__ import annotations

import torch
from torch import Tensor

Params = dict[str, Tensor]


def randn(gen: torch.Generator, *shape: int, std: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * std


def bn_params(prefix: str, n: int, gen: torch.Generator) -> Params:
    """Random eval statistics of a BatchNorm named ``prefix`` with ``n`` channels."""
    return {
        f"{prefix}.weight": torch.rand(n, generator=gen, dtype=torch.float64) * 1.3 + 0.2,
        f"{prefix}.bias": randn(gen, n, std=0.2),
        f"{prefix}.running_mean": randn(gen, n, std=0.5),
        f"{prefix}.running_var": torch.rand(n, generator=gen, dtype=torch.float64) * 1.95 + 0.05,
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }
