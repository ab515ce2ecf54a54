"""Hyper-search scales: extracted from our or the official layout, saved, and turned into the plain
net's initialisation and multipliers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from reparam_core import SpecError, build_train_model
from reparam_core.cli import main
from reparam_core.example import randomize_statistics
from reparam_core.optim import extract_scales, grad_multipliers, plain_init, scales_of
from reparam_core.optim.scales import default_conv_init

ARCH = {"family": "repopt_vgg", "variant": "B1", "num_classes": 10, "input_size": [32, 32]}
HS = {**ARCH, "block": "csla", "block_options": {"trainable_scales": True}}


def official(key: str) -> str:
    key = re.sub(r"^stem\.", "stage0.", key)
    key = re.sub(r"^stages\.(\d+)\.", lambda m: f"stage{int(m.group(1)) + 1}.", key)
    return re.sub(r"^head\.fc\.", "linear.", key)


def hs_model() -> torch.nn.Module:
    model = build_train_model(HS)
    assert all(p.requires_grad for n, p in model.named_parameters() if "scale_" in n)  # the -hs model
    return randomize_statistics(model, seed=1)


@pytest.mark.parametrize("layout", ["native", "official", "official-scales-file"])
def test_scales_come_out_of_any_layout(tmp_path: Path, layout: str) -> None:
    model = hs_model()
    state = model.state_dict()
    if layout != "native":
        state = {official(k): v for k, v in state.items()}
    if layout == "official-scales-file":  # RepOpt-VGG-B1-scales.pth: the scales alone
        state = {k: v for k, v in state.items() if ".scale_" in k}
    torch.save({"model": state, "epoch": 240}, tmp_path / "hs.pth")
    assert (
        main(
            [
                "repopt",
                "scales",
                "--checkpoint",
                str(tmp_path / "hs.pth"),
                "--out",
                str(tmp_path / "s.safetensors"),
            ]
        )
        == 0
    )
    extracted, expected = extract_scales(tmp_path / "s.safetensors"), scales_of(model)
    assert extracted.keys() == expected.keys() and len(expected) == 28  # B1: stem + 4 + 6 + 16 + 1 blocks
    assert all(torch.equal(extracted[b][k], expected[b][k]) for b in expected for k in expected[b])
    assert (
        sum("identity" in found for found in extracted.values()) == 28 - 5
    )  # no identity where a stage starts


def test_init_rule_makes_the_plain_net_equal_the_csla_net_at_initialisation() -> None:
    scales = scales_of(hs_model())
    plain = plain_init(build_train_model({**ARCH, "block": "conv_bn"}).double(), scales, seed=0)
    csla = build_train_model({**ARCH, "block": "csla"}).double()
    gen = torch.Generator().manual_seed(0)  # the same draws as plain_init's
    with torch.no_grad():
        for name, block in csla.named_modules():
            if name in scales:
                block.conv.weight.copy_(default_conv_init(block.conv.weight.shape, gen))
                block.conv_1x1.weight.copy_(default_conv_init(block.conv_1x1.weight.shape, gen))
                for kind, attr in (
                    ("conv", "scale_conv"),
                    ("1x1", "scale_1x1"),
                    ("identity", "scale_identity"),
                ):
                    if kind in scales[name]:
                        getattr(block, attr).weight.copy_(scales[name][kind])
        csla.head.load_state_dict(plain.head.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    a, b = csla.eval()(x), plain.eval()(x)
    assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-12


def test_multipliers_follow_the_update_rule() -> None:
    scales = scales_of(hs_model())
    plain = build_train_model({**ARCH, "block": "conv_bn"})
    block = plain.stages[0][1]  # in == out, stride 1: identity branch
    s, t = scales["stages.0.1"]["conv"], scales["stages.0.1"]["1x1"]
    for power in (1, 2):
        mult = grad_multipliers(plain, scales, power)[block.conv.weight].double()
        expected = (s.abs() ** power).reshape(-1, 1, 1, 1).expand_as(mult).clone()
        expected[:, :, 1, 1] += (t.abs() ** power)[:, None]
        rows = torch.arange(mult.shape[0])
        expected[rows, rows, 1, 1] += 1
        assert torch.allclose(mult, expected.float().double(), rtol=1e-6)


def test_scales_that_do_not_fit_are_refused() -> None:
    scales = scales_of(hs_model())
    other = build_train_model({**ARCH, "variant": "B2", "block": "conv_bn"})
    with pytest.raises(SpecError, match=r"scales do not fit|scales for"):
        grad_multipliers(other, scales)
    with pytest.raises(SpecError, match="no scale_conv"):
        extract_scales({"conv.weight": torch.zeros(1)})
