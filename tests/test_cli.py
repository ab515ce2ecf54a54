"""The `reparam` command: exit codes 0 / 1 (gate) / 2 (bad input), outputs, batch conversion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reparam_core.arch import build_train_model
from reparam_core.cli import main
from tests.helpers import randomize_

TINY = {
    "family": "repvgg",
    "stem": {"width": 8},
    "stages": [{"depth": 1, "width": 8}],
    "num_classes": 3,
    "input_size": [24, 24],
}


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": randomize_(build_train_model(TINY)).state_dict(), "epoch": 10}, path)
    return path


def convert(checkpoint: Path, out: Path, *extra: str, spec: str = json.dumps(TINY)) -> int:
    return main(["convert", "--spec", spec, "--checkpoint", str(checkpoint), "--out", str(out), *extra])


def test_convert_writes_artifacts_and_json(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert convert(checkpoint, out, "--device", "cpu", "--no-export", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"]["passed"] and (out / "model.safetensors").exists()
    assert set(summary["sha256"]) == {"model.safetensors", "deploy_spec.json", "report.json"}


def test_spec_from_a_yaml_file(tmp_path: Path, checkpoint: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "family: repvgg\nstem: {width: 8}\nstages: [{depth: 1, width: 8}]\nnum_classes: 3\n"
        "input_size: [24, 24]\n"
    )
    assert convert(checkpoint, tmp_path / "o", "--no-export", spec=str(spec)) == 0


def test_gate_failure_exits_1_and_writes_nothing(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert convert(checkpoint, out, "--tolerance", "1e-30") == 1 and not out.exists()
    assert "gate failed" in capsys.readouterr().err


def test_serving_check_is_reported_and_bad_options_exit_2(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        convert(checkpoint, tmp_path / "o", "--no-export", "--json", "--serving", '{"precision": "bf16"}')
        == 0
    )
    serving = json.loads(capsys.readouterr().out)["report"]["serving"]
    assert serving["options"]["precision"] == "bf16" and serving["equivalence"]["dtype"] == "bfloat16"
    assert convert(checkpoint, tmp_path / "p", "--serving", '{"precision": "fp8"}') == 2
    assert "serving.precision" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code = convert(bad, tmp_path / "o")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("reparam: error:") and err.count("\n") == 1
    assert convert(bad, tmp_path, spec='{"family": "x"}') == 2


def test_inspect_json(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # our RepVGG branch names are timm's: the layout is reported as timm's
    assert info["format"] == "timm" and info["form"] == "train" and info["family"] == "repvgg"
    assert info["blocks"] == 2 and info["parameters"] > 0


def test_inspect_recognises_official_deploy_form(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "deploy.pt"
    torch.save(
        {"stage0.rbr_reparam.weight": torch.zeros(8, 3, 3, 3), "stage0.rbr_reparam.bias": torch.zeros(8)},
        path,
    )
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "official" and info["form"] == "deploy" and info["family"] == "repvgg"


def test_convert_dir_reports_each_file(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    (folder / "good.pth").write_bytes(checkpoint.read_bytes())
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    (folder / "notes.txt").write_text("ignored")
    code = main(
        [
            "convert-dir",
            "--spec",
            json.dumps(TINY),
            "--checkpoints",
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--no-export",
            "--json",
        ]
    )
    results = {Path(r["checkpoint"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert code == 2 and set(results) == {"good.pth", "broken.pt"}
    assert results["good.pth"]["report"]["passed"] and results["broken.pt"]["exit_code"] == 2
    assert (tmp_path / "out" / "good" / "model.safetensors").exists() and not (
        tmp_path / "out" / "broken"
    ).exists()


def test_convert_dir_names_folders_without_checkpoint_suffixes(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for name in ("model_best.pth.tar", "a.pt", "a.pth"):
        (folder / name).write_bytes(checkpoint.read_bytes())
    out = tmp_path / "out"
    args = ["convert-dir", "--spec", json.dumps(TINY), "--checkpoints", str(folder), "--out", str(out)]
    main([*args, "--no-export", "--json"])
    capsys.readouterr()
    assert {p.name for p in out.iterdir()} == {"model_best", "a.pt", "a.pth"}


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reparam_core.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "convert" in result.stdout and "inspect" in result.stdout


def test_long_inline_spec_is_not_taken_for_a_file_name(tmp_path: Path) -> None:
    """A 4-stage custom spec is longer than a file name may be (255 bytes)."""
    spec = {**TINY, "stages": [{"depth": 1, "width": 8, "stride": 1, "kernel_size": 3} for _ in range(4)]}
    text = json.dumps(spec, indent=1)
    assert len(text) > 255
    path = tmp_path / "ckpt.pth"
    torch.save({"model": randomize_(build_train_model(spec)).state_dict()}, path)
    assert convert(path, tmp_path / "out", "--no-export", spec=text) == 0


def test_inspect_names_timm_layouts_and_fused_families(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    timm = pytest.importorskip("timm")
    path = tmp_path / "timm.pth"
    torch.save(timm.create_model("repvgg_a0").state_dict(), path)
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["form"], info["family"]) == ("timm", "train", "repvgg")
    fused = tmp_path / "fused.pth"
    for name, expected in (("repvgg_a0", "repvgg"), ("mobileone_s0", "mobileone")):
        model = timm.create_model(name).eval()
        torch.save(timm.utils.model.reparameterize_model(model).state_dict(), fused)
        assert main(["inspect", str(fused), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["form"], info["family"]) == ("deploy", expected)


def test_weights_choice_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = randomize_(build_train_model(TINY), seed=1).state_dict()
    ema = randomize_(build_train_model(TINY), seed=2).state_dict()
    path = tmp_path / "both.pth"
    torch.save({"state_dict": model, "state_dict_ema": ema}, path)
    for choice, expected in (("auto", "model"), ("model", "model"), ("ema", "ema")):
        assert convert(path, tmp_path / choice, "--no-export", "--json", "--weights", choice) == 0
        report = json.loads(capsys.readouterr().out)["report"]
        assert (
            report["weights"] == expected
            and "EMA weights under 'state_dict_ema'" in report["checkpoint_notes"][-1]
        )
