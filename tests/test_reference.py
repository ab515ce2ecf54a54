"""Proof against the user's own outputs: a reference file from a net that differs from what the spec
and checkpoint describe fails the gate, though the gate against our own training net passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from reparam_core import EquivalenceError, SpecError, build_train_model, convert, make_reference
from reparam_core.cli import main
from tests.helpers import TINY, randomize_

INPUTS = torch.randn(4, 3, 32, 24, generator=torch.Generator().manual_seed(7))


def trained() -> torch.nn.Module:
    return randomize_(build_train_model(TINY), seed=5).eval()


def permuted_branch(model: torch.nn.Module) -> torch.nn.Module:
    """The net the user really trained, if their layout differed from what we read: one block's
    1x1 branch with its output rows in another order (what a wrong reshape produces)."""
    with torch.no_grad():
        weight = model.stages[0][1].conv_1x1.conv.weight
        weight.copy_(weight.roll(1, dims=0))
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_reference_from_the_trained_net_passes(tmp_path: Path, dtype: torch.dtype) -> None:
    model = trained()
    reference = make_reference(model.to(dtype), INPUTS.to(dtype), tmp_path / "ref.safetensors")
    result = convert(TINY, trained().state_dict(), reference=tmp_path / "ref.safetensors")
    report = result.report.reference
    assert report is not None and report.passed and report.dtype == f"reference {str(dtype)[6:]}"
    assert report.input_shape == list(INPUTS.shape) and reference.outputs.shape == (4, TINY["num_classes"])
    bound = 1e-9 if dtype == torch.float64 else 1e-5
    assert report.max_rel_error <= bound


def test_a_reference_from_another_net_fails_where_the_plain_gate_passes(tmp_path: Path) -> None:
    make_reference(permuted_branch(trained()), INPUTS, tmp_path / "ref.safetensors")
    assert convert(TINY, trained().state_dict()).report.passed  # the plain gate cannot see it
    with pytest.raises(EquivalenceError, match=r"reference float32 at 4x3x32x24: max relative error") as info:
        convert(TINY, trained().state_dict(), reference=tmp_path / "ref.safetensors")
    assert info.value.report.reference is not None and not info.value.report.reference.passed


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"inputs": torch.zeros(2, 3, 8, 8)}, "exactly the tensors 'inputs' and 'outputs'"),
        ({"inputs": torch.zeros(2, 4, 8, 8), "outputs": torch.zeros(2, 5)}, r"should be \[N, 3, H, W\]"),
        ({"inputs": torch.zeros(2, 3, 8, 8), "outputs": torch.zeros(2, 7)}, r"should be \[N, 5\]"),
        ({"inputs": torch.zeros(2, 3, 8, 8), "outputs": torch.zeros(3, 5)}, "2 inputs but 3 outputs"),
        ({"inputs": torch.full((2, 3, 8, 8), float("nan")), "outputs": torch.zeros(2, 5)}, "finite"),
        ({"inputs": torch.zeros(2, 3, 8, 8, dtype=torch.int64), "outputs": torch.zeros(2, 5)}, "floating"),
    ],
)
def test_bad_reference_files_are_named(tmp_path: Path, tensors: dict, message: str) -> None:
    save_file(tensors, str(tmp_path / "ref.safetensors"))
    with pytest.raises(SpecError, match=message):
        convert(TINY, trained().state_dict(), reference=tmp_path / "ref.safetensors")


def test_cli_reference_command_and_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "reference_user_net.py").write_text(
        f"from reparam_core import build_train_model\ndef build():\n    return build_train_model({TINY!r})\n"
    )
    torch.save({"state_dict": trained().state_dict()}, tmp_path / "ckpt.pth")
    monkeypatch.chdir(tmp_path)
    args = ["--factory", "reference_user_net:build", "--checkpoint", "ckpt.pth", "--input-shape", "2,3,32,24"]
    assert main(["reference", *args, "--out", "ref.safetensors"]) == 0
    spec = f"{TINY}".replace("'", '"')  # inline JSON
    convert_args = ["convert", "--spec", spec, "--checkpoint", "ckpt.pth", "--no-export", "--json"]
    assert main([*convert_args, "--out", "good", "--reference", "ref.safetensors"]) == 0
    make_reference(permuted_branch(trained()), INPUTS, tmp_path / "other.safetensors")
    assert main([*convert_args, "--out", "bad", "--reference", "other.safetensors"]) == 1
    assert (tmp_path / "good" / "model.safetensors").exists() and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [(torch.zeros(65, 3, 32, 24), "at most 64 inputs"), (torch.zeros(2, 3, 65, 24), "at most 64x48 pixels")],
    ids=["too-many", "too-large"],
)
def test_reference_sizes_are_bounded_by_the_spec(tmp_path: Path, inputs: torch.Tensor, message: str) -> None:
    save_file(
        {"inputs": inputs, "outputs": torch.zeros(inputs.shape[0], 5)}, str(tmp_path / "ref.safetensors")
    )
    with pytest.raises(SpecError, match=message):
        convert(TINY, trained().state_dict(), reference=tmp_path / "ref.safetensors")
