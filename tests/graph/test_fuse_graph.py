"""The generic graph pass: every family from its training form, timm and torchvision models as
they are, a custom block nobody ships, and merges across nonlinear ops refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from reparam_core import BLOCKS, ConversionError, check_equivalence, reparameterize
from reparam_core.arch import build_train_model
from reparam_core.graph import fuse_graph
from reparam_core.layers import SESpec
from tests.helpers import randomize_

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def fused_error(model: nn.Module, shape: tuple[int, ...]) -> tuple[float, object]:
    model = randomize_(model.double()).eval()
    result = fuse_graph(model, torch.randn(*shape, dtype=torch.float64))
    report = check_equivalence(model, result.module, shape, device="cpu", tolerance=1e-12)
    return report.max_rel_error, result.report


@pytest.mark.parametrize("family", BLOCKS.names())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_block_family_from_its_training_form(family: str, data: st.DataObject) -> None:
    cls = BLOCKS.get(family)
    options = {
        "stride": data.draw(st.sampled_from([1, 2])),
        "groups": data.draw(st.sampled_from([1, 2, 8])),
        "dilation": data.draw(st.sampled_from([1, 2])) if cls.supports_dilation else 1,
        "padding_mode": data.draw(st.sampled_from(["zeros", "reflect", "circular"])),
        "se": data.draw(st.sampled_from([None, SESpec(rd_channels=2)])),
    }
    kernel_size = data.draw(st.sampled_from(cls.kernel_sizes))
    assume(cls.unsupported(kernel_size, options["groups"]) is None)  # what the family refuses
    block = cls(8, 8, kernel_size, **options)
    error, report = fused_error(block, (2, 8, 15, 12))
    assert error <= 1e-12, (family, options, error)
    # SE keeps its two 1x1 convs; a BN after its gate (QARepVGG) stays, as a per-channel 1x1 conv
    after_gate = 1 if block.se is not None and block.se.bn is not None else 0
    assert report.convs_after == 1 + (2 if options["se"] else 0) + after_gate, report


@pytest.mark.parametrize(
    ("name", "spec", "convs_after"),
    [
        ("repvgg_a0", {"family": "repvgg", "variant": "A0"}, 22),
        ("mobileone_s0", {"family": "mobileone", "variant": "S0"}, 43),
    ],
)
def test_timm_models_taken_as_they_are(name: str, spec: dict, convs_after: int) -> None:
    error, report = fused_error(timm.create_model(name), (1, 3, 64, 48))
    deploy = reparameterize(build_train_model(spec, device="meta").eval())  # the preset's deploy form
    assert error <= 1e-12
    assert report.convs_after == convs_after and report.params_after == sum(
        p.numel() for p in deploy.parameters()
    )
    assert {u.reason for u in report.unmerged} >= {"nonlinear op"}


def test_timm_mobileone_with_se_keeps_the_gates() -> None:
    error, report = fused_error(timm.create_model("mobileone_s4"), (1, 3, 64, 48))
    assert error <= 1e-12
    assert report.convs_after == 43 + 24  # 43 fused convs + the 12 SE modules' two 1x1 convs
    assert any(u.op == "mul" and u.reason == "nonlinear op" for u in report.unmerged)


def test_torchvision_resnet_only_folds_bn() -> None:
    error, report = fused_error(torchvision.models.resnet18(num_classes=10), (1, 3, 64, 48))
    assert error <= 1e-12
    assert report.convs_before == report.convs_after == 20
    assert sum(1 for u in report.unmerged if u.reason == "different inputs") == 8  # residual adds stay


class CustomBlock(nn.Module):
    """3x3 + 1x3 + 3x1 + (1x1 -> 3x3 average) + identity, each with its own learnable scale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.k3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.k13 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1))
        self.k31 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        self.k1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.scales = nn.Parameter(torch.randn(5, channels, 1, 1))
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scales
        avg = F.avg_pool2d(F.pad(self.k1(x), [1, 1, 1, 1]), 3, stride=1)  # pad the bias-free 1x1: exact
        y = s[0] * self.k3(x) + s[1] * self.k13(x) + s[2] * self.k31(x) + s[3] * avg + s[4] * x
        return F.relu(self.bn(y))


def test_a_custom_block_nobody_ships() -> None:
    model = nn.Sequential(CustomBlock(6), CustomBlock(6))
    error, report = fused_error(model, (2, 6, 11, 9))
    assert error <= 1e-12
    assert report.convs_before == 8 and report.convs_after == 2
    assert [r.kernel for r in report.regions] == [[3, 3], [3, 3]]


def test_whole_repvgg_net_from_our_blocks() -> None:
    error, report = fused_error(
        build_train_model({"family": "repvgg", "variant": "A0", "num_classes": 10}), (1, 3, 64, 48)
    )
    assert error <= 1e-12 and report.convs_after == 22


class AcrossNonlinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.d = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.a(x))
        y = self.b(F.max_pool2d(y, 3, stride=1, padding=1))
        gate = torch.sigmoid(self.c(y.mean(dim=(2, 3), keepdim=True)))
        return self.d(y * gate)


def test_nonlinear_ops_are_never_merged_across() -> None:
    error, report = fused_error(AcrossNonlinear(), (1, 4, 10, 10))
    assert error <= 1e-12 and report.convs_after == report.convs_before == 4
    reasons = {u.op: u.reason for u in report.unmerged}
    assert reasons["relu"] == "nonlinear op" and reasons["max_pool2d"] == "nonlinear op"
    assert reasons["mul"] == "nonlinear op" and reasons["mean"] == "unsupported op"


class BorderTrap(nn.Module):
    """BN before a zero-padded conv: folding it would be wrong at the borders."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_border_effects_are_refused_not_approximated() -> None:
    error, report = fused_error(BorderTrap(), (1, 4, 8, 8))
    assert error <= 1e-12
    assert [(u.op, u.reason) for u in report.unmerged] == [("Conv2d", "border effects")]
    assert report.regions[0].convs_merged == 0 and report.regions[0].kernel == [1, 1]  # the BN, kept apart
    assert report.convs_after == 2  # BN as a depthwise 1x1, then the conv


def test_training_mode_is_refused() -> None:
    with pytest.raises(ConversionError, match="training mode"):
        fuse_graph(nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)).train(), torch.randn(1, 3, 8, 8))
