"""`reparam fuse-graph`: a user's factory + checkpoint -> verified graph-fused artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reparam_core.cli import main
from tests.helpers import randomize_

FACTORY = """
import torch.nn as nn
from reparam_core.blocks import DiverseBranchBlock, RepVGGBlock


def net():
    return nn.Sequential(RepVGGBlock(3, 8, stride=2), DiverseBranchBlock(8, 8), nn.AdaptiveAvgPool2d(1))
"""


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "user_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_models

    torch.save({"state_dict": randomize_(user_models.net()).state_dict()}, tmp_path / "net.pth")
    return tmp_path


def test_fuse_graph_writes_verified_artifacts(project: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "fuse-graph",
            "--factory",
            "user_models:net",
            "--checkpoint",
            "net.pth",
            "--input-shape",
            "1,3,32,24",
            "--out",
            "out",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fusion"]["convs_before"] == 7 and summary["fusion"]["convs_after"] == 2
    assert all(r["passed"] and r["max_rel_error"] <= 1e-12 for r in summary["equivalence"])
    assert {p.name for p in (project / "out").iterdir()} == {
        "model.safetensors",
        "model.pt2",
        "report.json",
        "graph_module.py",
    }
    program = torch.export.load(str(project / "out" / "model.pt2")).module()
    assert program(torch.randn(3, 3, 32, 24)).shape == (3, 8, 1, 1)


def test_bad_factory_and_checkpoint_exit_2(project: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["fuse-graph", "--checkpoint", "net.pth", "--input-shape", "1,3,32,24", "--out", "o"]
    assert main([*base, "--factory", "user_models"]) == 2
    assert main([*base, "--factory", "user_models:missing"]) == 2
    good = [*base, "--factory", "user_models:net"]
    assert main([*good, "--input-shape", "1,3"]) == 2  # a repeated option: the last one counts
    torch.save({"other.weight": torch.zeros(1)}, project / "bad.pth")
    assert main([*good, "--checkpoint", "bad.pth"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4  # one line per refused command, no dump of every key
    assert (
        "does not fit the model: missing" in lines[-1] and "unexpected 1 tensors: other.weight" in lines[-1]
    )
    assert not (project / "o").exists()
