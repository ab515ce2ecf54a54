"""OREPA as JUGGHM/OREPA_CVPR2022 trains it: checkpoints saved the way its train.py saves them, in
the layout its models/repvgg.py produces, convert to deploy nets that equal the official training
net (tests/official/orepa.py, written independently of our blocks) in float64."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reparam_core import convert
from tests.official.orepa import Layer, net_forward, net_params

CLASSES = 5
INPUT = [20, 16]


def save_as_official_train_py(state: dict[str, torch.Tensor], path: Path, ddp: bool) -> Path:
    """train.py's save_checkpoint: the model's state dict in float32, beside optimizer and scheduler."""
    weights = {
        ("module." if ddp else "") + k: v.float() if v.is_floating_point() else v for k, v in state.items()
    }
    momentum = {i: {"momentum_buffer": torch.zeros(3)} for i in range(3)}
    torch.save(
        {
            "epoch": 120,
            "arch": "RepVGG-A0",
            "state_dict": weights,
            "best_acc1": torch.tensor(71.3),
            "optimizer": {"state": momentum, "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]},
            "scheduler": {"last_epoch": 120, "base_lrs": [0.1]},
        },
        path,
    )
    return path


def vgg_layers(kind: str, widths: list[int], strides: list[int], groups: list[int], k: int) -> list[Layer]:
    layers = [Layer("stage0", "orepa" if kind != "orepa_vgg" else kind, 3, widths[0], 3, 2, 1)]
    cin = widths[0]
    for i, (width, stride, g) in enumerate(zip(widths[1:], strides, groups, strict=True)):
        layers.append(Layer(f"stage1.{i}", kind, cin, width, k, stride, g))
        cin = width
    return layers


def spec_for(block: str, widths: list[int], strides: list[int], groups: list[int], k: int) -> dict:
    stage = {
        "depth": len(widths) - 1,
        "width": widths[1],
        "stride": strides[0],
        "kernel_size": k,
        "groups": groups,
    }
    return {
        "family": "repvgg",
        "block": block,
        "stem": {"width": widths[0], "kernel_size": 3 if block != "orepa_large" else 5},
        "stages": [stage],
        "num_classes": CLASSES,
        "input_size": INPUT,
    }


CASES = {
    # name: (our block, official kind, stage widths, strides, groups, kernel)
    "groups1": ("orepa", "orepa", [8, 16, 16], [2, 1], [1, 1], 3),
    "groups2": ("orepa", "orepa", [8, 16, 16], [2, 1], [2, 2], 3),
    "groups4": ("orepa", "orepa", [8, 16, 16], [1, 1], [4, 4], 3),
    "groups8": ("orepa", "orepa", [16, 32, 32], [2, 1], [8, 8], 3),
    "groups16": ("orepa", "orepa", [16, 32, 32], [2, 1], [16, 16], 3),
    "depthwise": ("orepa", "orepa", [16, 16, 16], [1, 1], [16, 16], 3),
    "kernel5": ("orepa", "orepa", [8, 16, 16], [2, 1], [1, 2], 5),
    "kernel1": ("orepa", "orepa_1x1", [8, 16, 16], [1, 1], [1, 1], 1),
    "large5": ("orepa_large", "orepa_large", [8, 16, 16], [2, 1], [1, 1], 5),
    "large7": ("orepa_large", "orepa_large", [8, 16, 16], [2, 1], [1, 1], 7),
    "orepa_vgg": ("orepa_vgg", "orepa_vgg", [8, 16, 16, 16], [2, 1, 1], [1, 1, 1], 3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_official_orepa_checkpoint_equals_the_official_training_net(case: str, tmp_path: Path) -> None:
    block, kind, widths, strides, groups, k = CASES[case]
    layers = vgg_layers(kind, widths, strides, groups, k)
    if block == "orepa_large":  # the official net's stem is a large conv too in this test
        layers[0] = Layer("stage0", "orepa_large", 3, widths[0], 5, 2, 1)
    state = net_params(layers, CLASSES, torch.Generator().manual_seed(len(case)))
    path = save_as_official_train_py(state, tmp_path / "checkpoint.pth.tar", ddp=case == "groups2")
    result = convert(spec_for(block, widths, strides, groups, k), path, storage_dtype=torch.float64)
    assert result.report.checkpoint_format == "official" and result.report.passed
    trained = {
        key: value.float().double() if value.is_floating_point() else value for key, value in state.items()
    }
    x = torch.randn(3, 3, *INPUT, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = net_forward(x, trained, layers)
        got = result.deploy_model.eval()(x)
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert error <= 1e-9, error
