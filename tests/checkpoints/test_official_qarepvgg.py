"""QARepVGG as cxxgtxy/QARepVGG and YOLOv6 train it: checkpoints in the layout their blocks produce
(saved the way cxxgtxy's main.py saves them) convert to deploy nets that equal the official training
net (tests/official/qarepvgg.py, written independently of our blocks) in float64."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from reparam_core import CheckpointError, convert, load_artifacts
from reparam_core.arch import build_train_model
from reparam_core.checkpoints import fits, guess_family
from tests.official.qarepvgg import (
    G2_MAP,
    G4_MAP,
    Layer,
    block_params,
    net_forward,
    net_params,
    preset_layers,
    repvgg_layers,
)

CLASSES = 5
INPUT = [40, 36]
BLOCK = {"cxx_v1": "qarepvgg_v1", "cxx_v2": "qarepvgg", "yolov6": "qarepvgg", "yolov6_v2": "qarepvgg_avg"}


def save_as_official_main_py(state: dict[str, torch.Tensor], path: Path, ddp: bool) -> Path:
    """main.py's checkpoint: the model's state dict (float32) beside optimizer, scheduler, argparse
    args and the EMA copy of the weights."""
    weights = {
        ("module." if ddp else "") + k: v.float() if v.is_floating_point() else v for k, v in state.items()
    }
    torch.save(
        {
            "model": weights,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            "lr_scheduler": {"last_epoch": 120},
            "epoch": 120,
            "scaler": {"scale": 65536.0},
            "args": argparse.Namespace(model="QARepVGGV2-A0", epochs=120),
            "model_ema": {k: v.clone() for k, v in weights.items()},
        },
        path,
    )
    return path


def spec_for(layers: list[Layer], kind: str) -> dict[str, Any]:
    """Our spec of a net of ``layers`` (one stage per run of blocks after the stem)."""
    stages: list[dict[str, Any]] = []
    for layer in layers[1:]:
        index = int(layer.prefix.removeprefix("stage").split(".")[0])
        if len(stages) < index:
            stages.append({"depth": 0, "width": layer.cout, "stride": layer.stride, "groups": []})
            if layer.se:
                stages[-1]["se"] = {"reduction": 16}
        stages[-1]["depth"] += 1
        stages[-1]["groups"].append(layer.groups)
    return {
        "family": "qarepvgg",
        "block": BLOCK[kind],
        "stem": {"width": layers[0].cout},
        "stages": stages,
        "num_classes": CLASSES,
        "input_size": INPUT,
    }


def custom(
    kind: str, stem: int, stages: list[tuple[int, int, int]], groups: dict[int, int], se: bool
) -> list[Layer]:
    """The official net of ``stem`` then ``(depth, width, stride)`` stages, ``groups`` by layer index
    (``override_groups_map``); with ``se``, SE on the stages' blocks (not on the stem)."""
    layers = repvgg_layers(
        kind, stem, [(d, w) for d, w, _ in stages], groups, strides=tuple(s for *_, s in stages)
    )
    return [layers[0], *(dataclasses.replace(layer, se=se) for layer in layers[1:])]


CASES = {
    # name: (official kind, stem width, stages (depth, width, stride), groups by layer index, SE)
    # every case has blocks with identity, with stride 2 and with a channel change at stride 1
    "v2": ("cxx_v2", 16, [(2, 16, 2), (1, 32, 1)], {}, False),
    "v2-groups2": ("cxx_v2", 16, [(2, 16, 2), (2, 32, 1)], {1: 2, 2: 2, 4: 2}, False),
    "v2-groups4": ("cxx_v2", 16, [(2, 32, 1), (1, 32, 2)], {2: 4, 3: 4}, False),
    "v2-depthwise": ("cxx_v2", 16, [(2, 16, 1), (1, 16, 2)], {1: 16, 2: 16, 3: 16}, False),
    "v2-se": ("cxx_v2", 16, [(2, 16, 2), (2, 32, 1)], {2: 2}, True),
    "v1": ("cxx_v1", 16, [(2, 16, 2), (1, 32, 1)], {}, False),
    "v1-groups4": ("cxx_v1", 16, [(2, 16, 1), (1, 32, 2)], {1: 4, 2: 4, 3: 4}, False),
    "v1-se": ("cxx_v1", 16, [(2, 16, 2), (2, 32, 1)], {2: 4}, True),
    "yolov6": ("yolov6", 16, [(2, 16, 2), (1, 32, 1)], {}, False),
    "yolov6-v2": ("yolov6_v2", 16, [(2, 16, 2), (1, 32, 1)], {}, False),
    "yolov6-v2-groups2": ("yolov6_v2", 16, [(2, 16, 1), (2, 32, 2)], {1: 2, 2: 2, 4: 2}, False),
}


def assert_equals_official(spec: dict[str, Any], layers: list[Layer], path: Path, state: dict) -> None:
    result = convert(spec, path, storage_dtype=torch.float64)
    assert result.report.checkpoint_format == "official" and result.report.passed
    assert result.report.weights == "model"
    trained = {k: v.float().double() if v.is_floating_point() else v for k, v in state.items()}
    x = torch.randn(
        3, 3, *spec["input_size"], generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    with torch.no_grad():
        expected = net_forward(x, trained, layers)
        got = result.deploy_model.eval()(x)
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert error <= 1e-9, error


@pytest.mark.parametrize("case", list(CASES))
def test_official_qarepvgg_checkpoint_equals_the_official_training_net(case: str, tmp_path: Path) -> None:
    layers = custom(*CASES[case])
    kind = CASES[case][0]
    state = net_params(layers, CLASSES, torch.Generator().manual_seed(len(case)))
    path = save_as_official_main_py(state, tmp_path / "checkpoint.pth", ddp=case.endswith("groups2"))
    assert_equals_official(spec_for(layers, kind), layers, path, state)


def test_official_a0_preset_equals_the_official_training_net(tmp_path: Path) -> None:
    """create_QARepVGGBlockV2_A0 against ``{"family": "qarepvgg", "variant": "A0"}``."""
    layers = preset_layers("cxx_v2", [2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5])
    state = net_params(layers, CLASSES, torch.Generator().manual_seed(7))
    path = save_as_official_main_py(state, tmp_path / "checkpoint.pth", ddp=False)
    spec = {"family": "qarepvgg", "variant": "A0", "num_classes": CLASSES, "input_size": [64, 48]}
    assert_equals_official(spec, layers, path, state)


def shapes_only(layers: list[Layer], classes: int) -> dict[str, torch.Tensor]:
    """The official net's tensors as shapes only (meta tensors: the large presets stay small)."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        state |= {k: torch.empty(v.shape, device="meta") for k, v in block_params(layer, gen).items()}
    state["linear.weight"] = torch.empty(classes, layers[-1].cout, device="meta")
    state["linear.bias"] = torch.empty(classes, device="meta")
    return state


PRESETS = {
    # our variant: (num_blocks, multipliers, groups map, use_se) as create_QARepVGGBlockV2_* build it
    "A1": ([2, 4, 14, 1], [1, 1, 1, 2.5], None, False),
    "A2": ([2, 4, 14, 1], [1.5, 1.5, 1.5, 2.75], None, False),
    "B0": ([4, 6, 16, 1], [1, 1, 1, 2.5], None, False),
    "B1g2": ([4, 6, 16, 1], [2, 2, 2, 4], G2_MAP, False),
    "B2g4": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], G4_MAP, False),
    "D2se": ([8, 14, 24, 1], [2.5, 2.5, 2.5, 5], None, True),
}


@pytest.mark.parametrize("variant", list(PRESETS))
def test_official_presets_have_the_official_tensors(variant: str) -> None:
    num_blocks, multipliers, groups_map, use_se = PRESETS[variant]
    layers = preset_layers("cxx_v2", num_blocks, multipliers, groups_map)
    layers = [dataclasses.replace(layer, se=use_se) for layer in layers]
    state = shapes_only(layers, 1000)
    model = build_train_model({"family": "qarepvgg", "variant": variant}, device="meta")
    assert fits(model, state)
    assert guess_family(state) == "qarepvgg"


def test_v1_checkpoint_for_the_default_block_names_the_block_that_fits(tmp_path: Path) -> None:
    layers = custom("cxx_v1", 16, [(2, 16, 1)], {}, False)
    state = net_params(layers, CLASSES, torch.Generator().manual_seed(3))
    spec = {**spec_for(layers, "cxx_v1"), "block": "qarepvgg"}
    with pytest.raises(
        CheckpointError, match=r"unexpected.*conv_1x1\.conv\.weight.*; it fits block qarepvgg_v1$"
    ):
        convert(spec, state)


def test_se_net_with_its_post_gate_bn_saves_exports_and_loads_back(tmp_path: Path) -> None:
    """The BN kept after the SE gate travels through the deploy spec, safetensors and torch.export."""
    layers = custom(*CASES["v2-se"])
    state = net_params(layers, CLASSES, torch.Generator().manual_seed(11))
    result = convert(spec_for(layers, "cxx_v2"), state)
    assert all(layer.se is not None and layer.se.norm_eps == 1e-5 for layer in result.deploy_spec.stages[0])
    result.save(tmp_path / "deploy", export=True)
    model, spec = load_artifacts(tmp_path / "deploy")
    program = torch.export.load(str(tmp_path / "deploy" / "model.pt2")).module()
    x = torch.randn(2, 3, *INPUT)
    with torch.no_grad():
        expected = result.deploy_model.eval()(x)
        assert torch.equal(model(x), expected)
        assert torch.allclose(program(x), expected, rtol=0, atol=1e-5)
    assert spec == result.deploy_spec
