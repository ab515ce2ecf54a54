"""Checkpoints in other projects' key layouts convert to exactly what our own layout gives.

timm models are built by timm itself. The official-code and MMPretrain layouts are produced
here from the key names of the official repositories and of MMPretrain, by renaming our keys with
tables written independently of the importer's rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from reparam_core.arch import build_train_model
from reparam_core.conversion import convert
from tests.helpers import randomize_

timm = pytest.importorskip("timm")
from timm.utils.model import reparameterize_model  # noqa: E402

SMALL = {"input_size": [64, 48], "num_classes": 10}


def native_state(spec: dict) -> dict[str, Tensor]:
    return randomize_(build_train_model(spec), seed=3).state_dict()


def renamer(*pairs: tuple[str, str | Callable[[re.Match[str]], str]]) -> Callable[[dict], dict]:
    def rename(state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for key, value in state.items():
            for pattern, replacement in pairs:
                key = re.sub(pattern, replacement, key)
            out[key] = value
        return out

    return rename


def stage_plus_one(prefix: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{prefix}{int(m.group(1)) + 1}."


OFFICIAL_MODEL = (
    ("^stem\\.", "stage0."),
    (r"^stages\.(\d+)\.", stage_plus_one("stage")),
    (r"^head\.fc\.", "linear."),
)
TO_OFFICIAL_REPVGG = renamer(
    *OFFICIAL_MODEL,
    (r"\.conv_kxk\.", ".rbr_dense."),
    (r"\.conv_1x1\.", ".rbr_1x1."),
    (r"\.identity\.", ".rbr_identity."),
    (r"\.se\.reduce\.", ".se.down."),
    (r"\.se\.expand\.", ".se.up."),
)
# cxxgtxy/QARepVGG (and YOLOv6's QARepVGG blocks): RepVGG's names, the post-sum BN is the block's
# own ``bn`` whether or not an SE gate comes before it
TO_OFFICIAL_QAREPVGG = renamer(
    *OFFICIAL_MODEL,
    (r"\.se\.bn\.", ".bn."),
    (r"\.conv_kxk\.", ".rbr_dense."),
    (r"\.conv_1x1\.", ".rbr_1x1."),
    (r"\.identity\.", ".rbr_identity."),
    (r"\.se\.reduce\.", ".se.down."),
    (r"\.se\.expand\.", ".se.up."),
)
TO_OFFICIAL_MOBILEONE = renamer(
    *OFFICIAL_MODEL,
    (r"\.conv_kxk\.", ".rbr_conv."),
    (r"\.conv_scale\.", ".rbr_scale."),
    (r"\.identity\.", ".rbr_skip."),
)
TO_OFFICIAL_ACB = renamer(*OFFICIAL_MODEL, (r"\.(square|ver|hor)\.(conv|bn)\.", r".\1_\2."))
TO_OFFICIAL_DBB = renamer(
    *OFFICIAL_MODEL,
    (r"\.origin\.", ".dbb_origin."),
    (r"\.conv_1x1\.", ".dbb_1x1."),
    (r"\.avg_conv\.", ".dbb_avg.conv."),
    (r"\.avg_bn_pad\.bn\.", ".dbb_avg.bn.bn."),
    (r"\.avg_bn\.", ".dbb_avg.avgbn."),
    (r"\.seq_conv1\.", ".dbb_1x1_kxk.idconv1."),
    (r"\.seq_bn_pad\.bn\.", ".dbb_1x1_kxk.bn1.bn."),
    (r"\.seq_conv2\.", ".dbb_1x1_kxk.conv2."),
    (r"\.seq_bn\.", ".dbb_1x1_kxk.bn2."),
)


MM_MODEL = ((r"^stem\.", "backbone.stem."), (r"^stages\.(\d+)\.", stage_plus_one("backbone.stage_")))
TO_MMPRETRAIN_REPVGG = renamer(
    *MM_MODEL,
    (r"\.conv_kxk\.", ".branch_3x3."),
    (r"\.conv_1x1\.", ".branch_1x1."),
    (r"\.identity\.", ".branch_norm."),
    (r"\.bn\.", ".norm."),
    (r"\.se\.reduce\.", ".se_layer.conv1.conv."),
    (r"\.se\.expand\.", ".se_layer.conv2.conv."),
)
TO_MMPRETRAIN_MOBILEONE = renamer(
    (r"^stem\.", "backbone.stage0."),
    (r"^stages\.(\d+)\.", stage_plus_one("backbone.stage")),
    (r"\.conv_kxk\.", ".branch_conv_list."),
    (r"\.conv_scale\.", ".branch_scale."),
    (r"\.identity\.", ".branch_norm."),
    (r"\.bn\.", ".norm."),
    (r"\.se\.reduce\.", ".se.conv1.conv."),
    (r"\.se\.expand\.", ".se.conv2.conv."),
)

CUSTOM = {
    "family": "repvgg",
    "stem": {"width": 16},
    "stages": [{"depth": 2, "width": 16}, {"depth": 1, "width": 32}],
}
CUSTOM_SE = {  # SE on the last two blocks only
    **CUSTOM,
    "stages": [{"depth": 2, "width": 16, "se": {}, "se_blocks": 1}, {"depth": 1, "width": 32, "se": {}}],
}
CASES = [
    ("official", {"family": "repvgg", "variant": "A0", **SMALL}, TO_OFFICIAL_REPVGG),
    ("official", {"family": "repvgg", "variant": "D2se", **SMALL}, TO_OFFICIAL_REPVGG),
    ("official", {"family": "mobileone", "variant": "S0", **SMALL}, TO_OFFICIAL_MOBILEONE),
    ("official", {"family": "repopt_vgg", "variant": "B1", **SMALL}, renamer(*OFFICIAL_MODEL)),
    ("official", {**CUSTOM, "family": "repopt_vgg", "block": "csla", **SMALL}, renamer(*OFFICIAL_MODEL)),
    ("official", {**CUSTOM, "block": "acb", **SMALL}, TO_OFFICIAL_ACB),
    ("official", {**CUSTOM, "block": "dbb", **SMALL}, TO_OFFICIAL_DBB),
    ("official", {**CUSTOM, "block": "orepa", **SMALL}, renamer(*OFFICIAL_MODEL)),
    ("official", {**CUSTOM, "block": "orepa_vgg", **SMALL}, TO_OFFICIAL_REPVGG),
    ("official", {"family": "qarepvgg", "variant": "A0", **SMALL}, TO_OFFICIAL_QAREPVGG),
    ("official", {**CUSTOM_SE, "family": "qarepvgg", "block": "qarepvgg_v1", **SMALL}, TO_OFFICIAL_QAREPVGG),
    ("official", {**CUSTOM_SE, "family": "qarepvgg", "block": "qarepvgg_avg", **SMALL}, TO_OFFICIAL_QAREPVGG),
    ("official", {**CUSTOM_SE, "family": "repopt_vgg", "block": "csla", **SMALL}, renamer(*OFFICIAL_MODEL)),
    ("mmpretrain", {"family": "repvgg", "variant": "A0", **SMALL}, TO_MMPRETRAIN_REPVGG),
    ("mmpretrain", {"family": "repvgg", "variant": "D2se", **SMALL}, TO_MMPRETRAIN_REPVGG),
    ("mmpretrain", {"family": "mobileone", "variant": "S4", **SMALL}, TO_MMPRETRAIN_MOBILEONE),
]


@pytest.mark.parametrize(
    ("layout", "spec", "rename"), CASES, ids=[f"{c[0]}-{c[1].get('variant') or c[1]['block']}" for c in CASES]
)
def test_foreign_layout_converts_like_native(layout: str, spec: dict, rename: Callable) -> None:
    state = native_state(spec)
    reference = convert(spec, state)
    foreign = rename(state)
    assert set(foreign) != set(state)
    result = convert(spec, foreign)
    assert result.report.checkpoint_format == layout
    assert result.report.passed
    expected, got = reference.state_dict(), result.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize(
    ("timm_name", "spec"),
    [
        ("repvgg_a0", {"family": "repvgg", "variant": "A0"}),
        ("repvgg_b1g4", {"family": "repvgg", "variant": "B1g4"}),
        ("mobileone_s0", {"family": "mobileone", "variant": "S0"}),
        ("mobileone_s4", {"family": "mobileone", "variant": "S4"}),
    ],
)
def test_timm_checkpoints_match_timms_own_fusion(timm_name: str, spec: dict) -> None:
    # Compared in float64: with random BN statistics these deep nets amplify float32 rounding to
    # percent-level differences for any fusion (timm's included); float64 leaves only the fusion.
    model = randomize_(timm.create_model(timm_name, num_classes=10), seed=5).double().eval()
    result = convert({**spec, **SMALL}, model.state_dict(), storage_dtype=torch.float64)
    assert result.report.checkpoint_format == "timm"
    assert result.report.passed
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    with torch.no_grad():
        theirs = reparameterize_model(model)(x)
        ours = result.deploy_model(x)
        train = model(x)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-9
    assert ((ours - train).abs().max() / train.abs().max()).item() < 1e-9
    assert (ours.argmax(1) == theirs.argmax(1)).all()


class CfgNode(dict):
    """Stands for yacs' CfgNode, which DingXiaoH/RepVGG main.py and RepOptimizers main_repopt.py
    pickle as 'config' beside the weights (a dict subclass with attributes of its own)."""

    def __init__(self, init: dict | None = None) -> None:
        super().__init__(init or {})
        self.__dict__["__immutable__"] = True


@pytest.mark.parametrize(
    ("spec", "rename"),
    [
        ({"family": "repvgg", "variant": "A0", **SMALL}, TO_OFFICIAL_REPVGG),
        ({"family": "repopt_vgg", "variant": "B1", **SMALL}, renamer(*OFFICIAL_MODEL)),
    ],
    ids=["repvgg-main.py", "repoptimizers-main_repopt.py"],
)
def test_official_training_script_checkpoints_convert(tmp_path: Path, spec: dict, rename: Callable) -> None:
    state = native_state(spec)
    path = tmp_path / "ckpt_epoch_120.pth"
    config = CfgNode({"MODEL": CfgNode({"ARCH": "RepVGG-A0"}), "TRAIN": CfgNode({"EMA_ALPHA": 0.0})})
    torch.save(
        {
            "model": rename(state),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            "lr_scheduler": {"last_epoch": 120},
            "max_accuracy": 72.4,
            "epoch": 120,
            "config": config,
        },
        path,
    )
    result = convert(spec, path)
    assert result.report.checkpoint_format == "official" and result.report.weights == "only"
    assert any("CfgNode" in note for note in result.report.checkpoint_notes)
    expected, got = convert(spec, state).state_dict(), result.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
