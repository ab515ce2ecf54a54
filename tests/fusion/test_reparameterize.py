"""reparameterize() on arbitrary models: every block replaced, nothing else touched, idempotent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam_core import (
    ConversionError,
    FusedConv,
    ReparamBlock,
    check_equivalence,
    count_convs,
    reparameterize,
)
from reparam_core.blocks import (
    ACBlock,
    DiverseBranchBlock,
    LinearAddBlock,
    MobileOneBlock,
    OREPABlock,
    RepVGGBlock,
)
from reparam_core.layers import SESpec
from tests.helpers import randomize_


class Detector(nn.Module):
    """A user's model: blocks nested at several depths among ordinary layers."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            RepVGGBlock(3, 16, stride=2),
            nn.Sequential(ACBlock(16, 16), nn.MaxPool2d(2)),
            DiverseBranchBlock(16, 32, groups=2),
        )
        self.neck = nn.ModuleDict(
            {"a": OREPABlock(32, 32, se=SESpec(rd_channels=8)), "b": MobileOneBlock(32, 32, num_branches=3)}
        )
        self.extra = nn.Conv2d(32, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.tail = LinearAddBlock(32, 32)
        self.cls = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        x = self.neck["b"](self.neck["a"](x))
        x = self.tail(torch.relu(self.bn(self.extra(x))))
        return self.cls(x.mean(dim=(2, 3)))


def make_detector() -> Detector:
    return randomize_(Detector().double()).eval()


def test_every_block_replaced_and_others_untouched() -> None:
    model = make_detector()
    fused = reparameterize(model)
    assert not any(isinstance(m, ReparamBlock) for m in fused.modules())
    assert sum(isinstance(m, FusedConv) for m in fused.modules()) == 6
    assert fused.extra is not model.extra and torch.equal(fused.extra.weight, model.extra.weight)
    assert isinstance(fused.bn, nn.BatchNorm2d) and isinstance(fused.backbone[1][1], nn.MaxPool2d)
    assert count_convs(fused) == 7
    report = check_equivalence(model, fused, (2, 3, 33, 27), device="cpu", tolerance=1e-12)
    assert report.passed, report


def test_input_model_is_not_modified_unless_inplace() -> None:
    model = make_detector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reparameterize(model)
    assert isinstance(model.backbone[0], RepVGGBlock)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same = reparameterize(model, inplace=True)
    assert same is model and isinstance(model.backbone[0], FusedConv)


def test_second_call_changes_nothing() -> None:
    once = reparameterize(make_detector())
    twice = reparameterize(once)
    assert list(once.state_dict()) == list(twice.state_dict())
    assert all(
        torch.equal(a, b)
        for a, b in zip(once.state_dict().values(), twice.state_dict().values(), strict=True)
    )


def test_single_block_returns_fused_conv() -> None:
    block = randomize_(RepVGGBlock(4, 4).double()).eval()
    assert isinstance(reparameterize(block), FusedConv)


def test_training_mode_is_refused() -> None:
    model = make_detector().train()
    with pytest.raises(ConversionError, match=r"block 'backbone.0' is in training mode.*model.eval\(\)"):
        reparameterize(model)
