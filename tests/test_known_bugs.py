"""Regression tests for the bugs of public converters; each fails on the buggy behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reparam_core import (
    ConversionError,
    DeploySpec,
    FusedConv,
    PlainNet,
    StagedNet,
    check_equivalence,
    reparameterize,
)
from reparam_core.blocks import ACBlock, DiverseBranchBlock, MobileOneBlock, RepVGGBlock
from reparam_core.layers import ClassifierHead, HeadSpec, SESpec
from tests.helpers import randomize_


def prepared(module: nn.Module) -> nn.Module:
    return randomize_(module.double()).eval()


@pytest.mark.parametrize(
    "make",
    [
        lambda: RepVGGBlock(8, 8, 3, dilation=2),
        lambda: ACBlock(8, 8, 3, dilation=3),
        lambda: MobileOneBlock(8, 8, 3, dilation=2, num_branches=2),
    ],
)
def test_dilation_is_kept(make: object) -> None:
    block = prepared(make())  # type: ignore[operator]
    fused = reparameterize(block)
    assert fused.conv.dilation == (block.dilation,) * 2
    x = torch.randn(1, 8, 20, 20, dtype=torch.float64)
    assert fused(x).shape == block(x).shape == (1, 8, 20, 20)
    assert check_equivalence(block, fused, (1, 8, 20, 20), device="cpu", tolerance=1e-12).passed


def test_se_works_on_non_square_inputs() -> None:
    block = prepared(RepVGGBlock(8, 8, se=SESpec(rd_channels=2)))
    x = torch.randn(1, 8, 7, 19, dtype=torch.float64)
    pre = block.linear_forward(x)
    gate = torch.sigmoid(block.se.expand(torch.relu(block.se.reduce(pre.mean(dim=(2, 3), keepdim=True)))))
    assert torch.allclose(block(x), torch.relu(pre * gate))
    assert check_equivalence(
        block, reparameterize(block), (2, 8, 7, 19), device="cpu", tolerance=1e-12
    ).passed


def small_net() -> StagedNet:
    stem = RepVGGBlock(3, 8, stride=2)
    stages = [
        [RepVGGBlock(8, 16, stride=2, groups=2), RepVGGBlock(16, 16, groups=4)],
        [DiverseBranchBlock(16, 16, groups=16)],
    ]
    return prepared(StagedNet(stem, stages, ClassifierHead(HeadSpec(in_features=16, num_classes=4))))


def test_deploy_constructor_keeps_stride_groups_and_padding() -> None:
    net = small_net()
    spec = DeploySpec.model_validate_json(reparameterize(net).deploy_spec().model_dump_json())
    plain = PlainNet(spec).double().eval()
    plain.load_state_dict(reparameterize(net).state_dict(), strict=True)
    conv = plain.stages[0][0].conv
    assert (conv.stride, conv.groups, conv.padding) == ((2, 2), 2, (1, 1))
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    assert plain.forward_features(x).shape[-2:] == net.forward_features(x).shape[-2:] == (4, 4)
    stride1 = plain.stages[0][1]
    assert stride1(torch.randn(1, 16, 16, 16, dtype=torch.float64)).shape[-2:] == (16, 16)
    assert check_equivalence(net, plain, (2, 3, 16, 16), device="cpu", tolerance=1e-12).passed


def test_converting_twice_is_idempotent_not_a_crash() -> None:
    net = small_net()
    once = reparameterize(net)
    again = reparameterize(once)
    assert check_equivalence(once, again, (1, 3, 16, 16), device="cpu", tolerance=0.0).passed


def test_fp64_accuracy_not_capped_by_fp32_constants() -> None:
    # DBB's avg branch used an fp32 1/k^2: fp64 relative error stuck near 3e-9.
    block = prepared(DiverseBranchBlock(16, 16, 5))
    report = check_equivalence(block, reparameterize(block), (2, 16, 23, 17), device="cpu", tolerance=1e-13)
    assert report.passed, report.max_rel_error


def test_deploy_model_holds_no_training_branches() -> None:
    net = small_net()
    fused = reparameterize(net)
    keys = list(fused.state_dict())
    assert not any(
        part in k for k in keys for part in ("conv_kxk", "conv_1x1", "identity", "bn", "origin", "seq_")
    )
    del net  # the deploy forward must not reach into the training model
    fused(torch.randn(1, 3, 16, 16, dtype=torch.float64))


def test_comparison_runs_in_eval_mode_even_if_given_train_mode() -> None:
    block = prepared(RepVGGBlock(8, 8))
    fused = reparameterize(block)
    block.train()
    report = check_equivalence(block, fused, (4, 8, 9, 9), device="cpu", tolerance=1e-12)
    assert report.passed and block.training  # the caller's model is not switched


def test_converting_a_training_mode_model_is_refused() -> None:
    with pytest.raises(ConversionError, match="training mode"):
        reparameterize(small_net().train())


def test_fused_conv_has_only_conv_and_epilogue() -> None:
    fused = reparameterize(prepared(RepVGGBlock(8, 8, se=SESpec(rd_channels=2))))
    assert isinstance(fused, FusedConv)
    assert {name for name, _ in fused.named_children()} == {"conv", "se", "act"}
