"""``reparam example``: a small training-form checkpoint, its spec and a photo to try everything on.

The net is a small RepVGG (three stages, 4 classes) with every branch present and realistic BN
statistics, saved the way training scripts save it (``{"state_dict": ..., "epoch": ...}``). It is
not trained on anything: its predictions mean nothing, but converting it exercises every branch.
The photo (``cat.jpg``) is scikit-image's "Chelsea the cat", CC0 by Stefan van der Walt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import build_train_model
from .blocks.csla import ChannelScale
from .deploy.artifacts import write_file_atomically

PHOTO = Path(__file__).resolve().parent / "data" / "cat.jpg"
SPEC: dict[str, Any] = {
    "family": "repvgg",
    "stem": {"width": 16},
    "stages": [{"depth": 2, "width": 16}, {"depth": 2, "width": 32}, {"depth": 1, "width": 64}],
    "num_classes": 4,
    "input_size": [64, 64],
    "preprocess": {"resize": 73, "crop": 64},
    "labels": ["cat", "dog", "owl", "fox"],
}


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN realistic eval statistics and move every zero/constant-initialised parameter,
    in place, so that no branch is trivially zero (a conversion then exercises all of them).

    Convs and linears: N(0, 1/(3 fan_in)) weights; BN: mean N(0, 0.5), var U(0.05, 2), gamma
    U(0.2, 1.5), beta N(0, 0.2); OREPA ``vector``, identity-based 1x1 deltas and CSLA scales random.
    """
    gen = torch.Generator().manual_seed(seed)

    def draw(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(draw(module.weight.shape) / (3 * fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(draw(module.bias.shape) * 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
                assert module.running_mean is not None  # tracked together with running_var
                n = module.num_features
                module.running_mean.copy_(draw(torch.Size([n])) * 0.5)
                module.running_var.copy_(uniform(n, 0.05, 2.0))
                if module.weight is not None and module.bias is not None:
                    module.weight.copy_(uniform(n, 0.2, 1.5))
                    module.bias.copy_(draw(torch.Size([n])) * 0.2)
            if isinstance(module, ChannelScale):
                module.weight.copy_(draw(module.weight.shape) * 0.5 + 1.0)
        for name, param in model.named_parameters():
            if name.endswith("vector") or "idconv1" in name:
                param.copy_(draw(param.shape) * 0.5)
    return model


def write_example(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``spec.json``, ``checkpoint.pth`` and ``cat.jpg`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"spec": out / "spec.json", "checkpoint": out / "checkpoint.pth", "photo": out / "cat.jpg"}
    model = randomize_statistics(build_train_model(SPEC), seed)
    state = {"state_dict": model.state_dict(), "epoch": 120}
    write_file_atomically(paths["checkpoint"], lambda tmp: torch.save(state, tmp))
    write_file_atomically(paths["spec"], lambda tmp: tmp.write_text(json.dumps(SPEC, indent=2) + "\n"))
    write_file_atomically(paths["photo"], lambda tmp: shutil.copyfile(PHOTO, tmp))
    return paths
