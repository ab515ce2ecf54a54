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
from reparam_core.arch import build_train_model
from tests.helpers import randomize_

TINY = {"family": "repvgg", "stem": {"width": 16}, "num_classes": 3}


def tiny_net(depths: list[int]) -> StagedNet:
    return build_train_model({**TINY, "stages": [{"depth": d, "width": 16} for d in depths]})


def params_m(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


PUBLISHED = [  # (family, variant, train M, deploy M, convs after fusion) with 1000 classes
    ("repvgg", "A0", 9.11, 8.31, 22),
    ("repvgg", "A1", 14.09, 12.79, 22),
    ("repvgg", "A2", 28.21, 25.50, 22),
    ("repvgg", "B0", 15.82, 14.34, 28),
    ("repvgg", "B1", 57.42, 51.83, 28),
    ("repvgg", "B1g2", 45.78, 41.36, 28),
    ("repvgg", "B1g4", 39.97, 36.13, 28),
    ("repvgg", "B2", 89.02, 80.32, 28),
    ("repvgg", "B2g4", 61.76, 55.78, 28),
    ("repvgg", "B3", 123.09, 110.96, 28),
    ("repvgg", "B3g4", 83.83, 75.63, 28),
    ("repvgg", "D2se", 133.33, 120.39, 48),
]


@pytest.mark.parametrize(("family", "variant", "train_m", "deploy_m", "convs"), PUBLISHED)
def test_published_parameter_counts(
    family: str, variant: str, train_m: float, deploy_m: float, convs: int
) -> None:
    net = build_train_model({"family": family, "variant": variant}, device="meta").eval()
    assert params_m(net) == train_m
    deploy = build_train_model({"family": family, "variant": variant}, device="meta").deploy_spec()
    plain = PlainNet(deploy).to("meta")
    assert params_m(plain) == deploy_m
    assert count_convs(plain) == convs


def test_a0_whole_net_equivalence_and_plain_rebuild() -> None:
    net = randomize_(
        build_train_model({"family": "repvgg", "variant": "A0", "num_classes": 10}).double()
    ).eval()
    fused = reparameterize(net)
    assert count_convs(fused) == 22
    spec = DeploySpec.parse(fused.deploy_spec().model_dump_json())
    plain = PlainNet(spec).double().eval()
    plain.load_state_dict(fused.state_dict(), strict=True)
    report = check_equivalence(net, plain, (2, 3, 96, 80), device="cpu", tolerance=1e-12)
    assert report.passed and report.top1_agreement == 1.0, report


def test_deploy_spec_is_plain_json() -> None:
    net = tiny_net([1, 1, 1, 1]).eval()
    data = json.loads(reparameterize(net).deploy_spec(meta={"labels": ["a", "b", "c"]}).model_dump_json())
    assert data["stem"]["stride"] == 2 and data["stem"]["padding"] == 1
    assert data["head"]["num_classes"] == 3 and data["meta"]["labels"] == ["a", "b", "c"]


def test_deploy_spec_rejects_broken_channel_chain() -> None:
    net = tiny_net([1, 1, 1, 1]).eval()
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
    net = tiny_net([1, 2, 1, 1]).eval()
    assert net.deploy_spec() == reparameterize(net).deploy_spec()
