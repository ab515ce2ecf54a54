"""Safe checkpoint reading: nothing is executed, wrappers are removed, bad files get clear errors."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from reparam_core import CheckpointError
from reparam_core.checkpoints import check_values, read_checkpoint

STATE = {"stem.conv.weight": torch.randn(4, 3, 3, 3), "stem.bn.running_var": torch.rand(4) + 0.1}
MARKER = Path("/tmp/reparam-test-pwned")


class TrainingConfig:
    """A user's config object that people pickle next to their weights."""

    def __init__(self) -> None:
        self.lr = 0.1


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {MARKER}",))


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {"lr": 0.1}},
        lambda s: {"ema": s},
        lambda s: {"model": {"state_dict": s}},
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": {f"_orig_mod.{k}": v for k, v in s.items()}},
    ],
    ids=["plain", "state_dict", "model", "ema", "nested", "module-prefix", "compiled-prefix"],
)
def test_unwraps_common_layouts(tmp_path: Path, wrap: object) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(STATE), path)  # type: ignore[operator]
    state, notes = read_checkpoint(path)
    assert equal(state, STATE) and notes == []


def test_safetensors_file_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(STATE, str(path))
    assert equal(read_checkpoint(path)[0], STATE)
    assert equal(read_checkpoint(path.read_bytes())[0], STATE)


def test_pickled_config_objects_are_skipped_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "with_config.pth"
    torch.save({"state_dict": STATE, "args": argparse.Namespace(lr=0.1), "cfg": TrainingConfig()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what plain safe loading does with it
    state, notes = read_checkpoint(path)
    assert equal(state, STATE)
    assert any("argparse.Namespace" in n for n in notes) and any("TrainingConfig" in n for n in notes)


@pytest.mark.parametrize("payload", [lambda: Exploit(), lambda: {"state_dict": STATE, "x": Exploit()}])
def test_code_in_a_pickle_never_runs(tmp_path: Path, payload: object) -> None:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save(payload(), path)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match=r"references posix.system.*nothing was executed.*re-save"):
        read_checkpoint(path)
    assert not MARKER.exists()


def test_no_tensors_at_all(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match="found no state dict"):
        read_checkpoint(path)


def test_legacy_pickle_format_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(STATE, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"legacy non-zip torch format.*re-save the weights"):
        read_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_files(tmp_path: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    if suffix == ".pt":
        torch.save(STATE, full)
    else:
        save_file(STATE, str(full))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.(pt|safetensors)"):
        read_checkpoint(cut)


def test_missing_file() -> None:
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint /nonexistent\.pt"):
        read_checkpoint("/nonexistent.pt")


def test_non_finite_and_negative_variance_are_named() -> None:
    bad = dict(STATE)
    bad["a.weight"] = torch.tensor([1.0, float("nan")])
    bad["b.weight"] = torch.tensor([float("inf")])
    bad["c.bn.running_var"] = torch.tensor([0.5, -0.1])
    with pytest.raises(CheckpointError) as info:
        check_values(bad)
    message = str(info.value)
    assert "NaN/Inf values in 2 tensors: a.weight, b.weight" in message
    assert "negative BN running_var in 1 tensors: c.bn.running_var" in message


def test_large_finite_values_are_not_flagged() -> None:
    check_values({"w": torch.full((1000,), 3e38)})  # the sum overflows; the values are finite
