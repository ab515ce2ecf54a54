"""Deploy nets built from their JSON spec alone; whole RepVGG-shaped nets."""

from __future__ import annotations

import json

import pytest
import torch

from reparam_core import (
    DeploySpec,
    PlainNet,
    SpecError,
    StagedNet,
    check_equivalence,
    count_convs,
    reparameterize,
)
from reparam_core.layers import HeadSpec
from reparam_core.nets import build_staged_net, repvgg_layout
from tests.support import randomize_


def repvgg_net(
    num_blocks: list[int], multipliers: list[float], classes: int = 1000, **kw: object
) -> StagedNet:
    stem, stages = repvgg_layout(num_blocks, multipliers, **kw)  # type: ignore[arg-type]
    head = HeadSpec(in_features=stages[-1][-1].out_channels, num_classes=classes)
    return build_staged_net(3, stem, stages, head)


def params_m(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


@pytest.mark.parametrize(
    ("blocks", "mult", "kw", "train_m", "deploy_m"),
    [
        ([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], {}, 9.11, 8.31),
        ([4, 6, 16, 1], [2, 2, 2, 4], {"group_layers": tuple(range(2, 27, 2)), "groups": 4}, 39.97, 36.13),
    ],
    ids=["A0", "B1g4"],
)
def test_repvgg_published_counts(
    blocks: list[int], mult: list[float], kw: dict, train_m: float, deploy_m: float
) -> None:
    net = repvgg_net(blocks, mult, **kw).eval()
    fused = reparameterize(net)
    assert params_m(net) == train_m
    assert params_m(fused) == deploy_m
    assert count_convs(fused) == 1 + sum(blocks)


def test_a0_whole_net_equivalence_and_plain_rebuild() -> None:
    net = randomize_(repvgg_net([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], classes=10).double()).eval()
    fused = reparameterize(net)
    assert count_convs(fused) == 22
    spec = DeploySpec.parse(fused.deploy_spec().model_dump_json())
    plain = PlainNet(spec).double().eval()
    plain.load_state_dict(fused.state_dict(), strict=True)
    report = check_equivalence(net, plain, (2, 3, 96, 80), device="cpu", tolerance=1e-12)
    assert report.passed and report.top1_agreement == 1.0, report


def test_deploy_spec_is_plain_json() -> None:
    net = repvgg_net([1, 1, 1, 1], [0.25, 0.25, 0.25, 0.25], classes=3).eval()
    data = json.loads(reparameterize(net).deploy_spec(meta={"labels": ["a", "b", "c"]}).model_dump_json())
    assert data["stem"]["stride"] == 2 and data["stem"]["padding"] == 1
    assert data["head"]["num_classes"] == 3 and data["meta"]["labels"] == ["a", "b", "c"]


def test_deploy_spec_rejects_broken_channel_chain() -> None:
    net = repvgg_net([1, 1, 1, 1], [0.25, 0.25, 0.25, 0.25], classes=3).eval()
    data = json.loads(reparameterize(net).deploy_spec().model_dump_json())
    data["stages"][1][0]["in_channels"] = 7
    with pytest.raises(SpecError, match=r"deploy spec: stages.1.0: expects 7 input channels, gets 16"):
        DeploySpec.parse(data)
    data["stem"]["groups"] = 3
    with pytest.raises(
        SpecError, match=r"deploy spec.stem: groups=3 must divide in_channels=3 and out_channels=16"
    ):
        DeploySpec.parse(json.dumps(data))


def test_training_net_deploy_spec_matches_fused() -> None:
    net = repvgg_net([1, 2, 1, 1], [0.25, 0.25, 0.25, 0.25], classes=3).eval()
    assert net.deploy_spec() == reparameterize(net).deploy_spec()
