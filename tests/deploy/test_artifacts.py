"""Artifacts: complete, reproducible, loadable without training code, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reparam_core import ConversionError
from reparam_core.arch import build_train_model
from reparam_core.conversion import ConversionResult, convert
from reparam_core.deploy.artifacts import (
    PROGRAM,
    REPORT,
    SPEC,
    WEIGHTS,
    load_artifacts,
    sha256_file,
)
from tests.helpers import randomize_

TINY = {
    "family": "repvgg",
    "stem": {"width": 8},
    "stages": [{"depth": 2, "width": 16, "se": {"reduction": 4}}],
    "num_classes": 4,
    "input_size": [32, 40],
    "labels": ["a", "b", "c", "d"],
}


@pytest.fixture(scope="module")
def result() -> ConversionResult:
    return convert(TINY, randomize_(build_train_model(TINY)).state_dict())


def test_writes_every_artifact_with_digests(tmp_path: Path, result: ConversionResult) -> None:
    out = tmp_path / "a0"
    digests = result.save(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS, SPEC, REPORT, PROGRAM])
    assert all(digests[name] == sha256_file(out / name) for name in digests)
    report = json.loads((out / REPORT).read_text())
    assert report["report"]["passed"] and report["sha256"][WEIGHTS] == digests[WEIGHTS]
    spec = json.loads((out / SPEC).read_text())
    assert spec["meta"]["arch_spec"]["labels"] == ["a", "b", "c", "d"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_artifacts_reload_and_export_round_trips(tmp_path: Path, result: ConversionResult) -> None:
    result.save(tmp_path / "m")
    model, spec = load_artifacts(tmp_path / "m")
    assert spec.head is not None and spec.head.num_classes == 4
    x = torch.randn(3, 3, 32, 40)  # batch 3: the exported program's batch dimension is dynamic
    with torch.no_grad():
        expected = result.deploy_model(x)
        assert torch.equal(model(x), expected)
        program = torch.export.load(str(tmp_path / "m" / PROGRAM)).module()
        assert torch.allclose(program(x), expected, rtol=1e-5, atol=1e-6)


def test_failure_leaves_nothing_and_keeps_previous_version(
    tmp_path: Path, result: ConversionResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model"
    result.save(out, export=False)
    before = sha256_file(out / WEIGHTS)

    def broken_export(*args: object, **kwargs: object) -> None:
        raise ConversionError("export failed")

    monkeypatch.setattr("reparam_core.deploy.artifacts.export_program", broken_export)
    with pytest.raises(ConversionError):
        result.save(out)
    assert sha256_file(out / WEIGHTS) == before and not (out / PROGRAM).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_overwrite_replaces_the_folder(tmp_path: Path, result: ConversionResult) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    result.save(out, export=False)
    assert not (out / "stale.txt").exists() and (out / WEIGHTS).exists()
