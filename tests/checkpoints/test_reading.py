"""Safe checkpoint reading: nothing is executed, wrappers are removed, bad files get clear errors."""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
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
    state, notes, _ = read_checkpoint(path)
    assert equal(state, STATE) and all("EMA weights" in note for note in notes)


MODEL = {k: v + 1 for k, v in STATE.items()}
EMA = {k: v + 2 for k, v in STATE.items()}


@pytest.mark.parametrize(
    ("layout", "model_key", "ema_key"),
    [("timm", "state_dict", "state_dict_ema"), ("repvgg", "model", "model_ema")],
)
def test_model_or_ema_weights_are_chosen_and_reported(
    tmp_path: Path, layout: str, model_key: str, ema_key: str
) -> None:
    path = tmp_path / f"{layout}.pth"
    torch.save({model_key: MODEL, ema_key: EMA, "epoch": 3}, path)
    auto, model, ema = (read_checkpoint(path, weights=w) for w in ("auto", "model", "ema"))
    assert equal(auto.state, MODEL) and auto.weights == "model" and f"under {ema_key!r}" in auto.notes[-1]
    assert equal(model.state, MODEL) and model.weights == "model"
    assert (
        equal(ema.state, EMA) and ema.weights == "ema" and f"EMA weights under {ema_key!r}" in ema.notes[-1]
    )


def test_mmengine_ema_checkpoints_are_read_the_way_mmengine_swaps_them(tmp_path: Path) -> None:
    """mmengine's EMAHook saves the averaged weights as 'state_dict' and the model's as
    'ema_state_dict' (keys prefixed 'module.', plus a 'steps' counter)."""
    path = tmp_path / "epoch_300.pth"
    swapped = {f"module.{k}": v for k, v in MODEL.items()} | {"steps": torch.tensor(1000)}
    torch.save({"meta": {"epoch": 300}, "state_dict": EMA, "ema_state_dict": swapped}, path)
    assert equal(read_checkpoint(path, weights="ema").state, EMA)
    assert equal(read_checkpoint(path, weights="model").state, MODEL)


def test_asking_for_weights_that_are_not_there(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": STATE}, path)
    with pytest.raises(CheckpointError, match="weights=ema, but the checkpoint has no EMA weights"):
        read_checkpoint(path, weights="ema")
    torch.save({"model_ema": STATE}, path)
    with pytest.raises(CheckpointError, match="weights=model, but the checkpoint has only EMA weights"):
        read_checkpoint(path, weights="model")


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
    state, notes, _ = read_checkpoint(path)
    assert equal(state, STATE)
    assert any("argparse.Namespace" in n for n in notes) and any("TrainingConfig" in n for n in notes)


class CfgNode(dict):
    """Behaves like yacs' CfgNode (DingXiaoH/RepVGG main.py pickles one as 'config'): a dict subclass
    with attributes of its own; any code of it that ran would leave the marker."""

    def __init__(self, init: dict | None = None) -> None:
        super().__init__(init or {})
        self.__dict__["__immutable__"] = True

    def __setstate__(self, state: dict) -> None:
        MARKER.touch()

    def __setitem__(self, key: object, value: object) -> None:
        MARKER.touch()
        super().__setitem__(key, value)


def test_official_training_script_checkpoint_loads(tmp_path: Path) -> None:
    """DingXiaoH/RepVGG main.py / RepOptimizers main_repopt.py save_checkpoint layout."""
    MARKER.unlink(missing_ok=True)
    config = CfgNode({"MODEL": CfgNode({"ARCH": "RepVGG-A0"}), "TRAIN": CfgNode({"BASE_LR": 0.1})})
    path = tmp_path / "ckpt_epoch_120.pth"
    torch.save(
        {
            "model": STATE,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            "lr_scheduler": {"last_epoch": 120},
            "max_accuracy": 72.4,
            "epoch": 120,
            "config": config,
            "scaler": {"scale": np.float64(65536.0), "steps": np.arange(3)},
        },
        path,
    )
    MARKER.unlink(missing_ok=True)  # building the config above ran its own code; loading must not
    state, notes, _ = read_checkpoint(path)
    assert equal(state, STATE) and not MARKER.exists()
    assert any("CfgNode" in n for n in notes)


def test_legacy_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(
        {"state_dict": STATE, "args": argparse.Namespace(lr=0.1)}, path, _use_new_zipfile_serialization=False
    )
    assert equal(read_checkpoint(path)[0], STATE)


class Reduces:
    """Pickles as ``callable(*args)``: the shape of every code-execution payload."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.func, self.args)


HOSTILE = {
    "posix.system": lambda: Reduces(os.system, f"touch {MARKER}"),
    "builtins.eval": lambda: Reduces(eval, f"open('{MARKER}', 'w')"),
    "builtins.exec": lambda: Reduces(exec, f"open('{MARKER}', 'w')"),
    "subprocess.Popen": lambda: Reduces(subprocess.Popen, ["touch", str(MARKER)]),
    "importlib.import_module": lambda: Reduces(importlib.import_module, "this"),
    "builtins.getattr": lambda: Reduces(getattr, Reduces(importlib.import_module, "os"), "system"),
    "builtins.__import__": lambda: Reduces(__import__, "os"),
    "torch.serialization.load": lambda: Reduces(torch.load, str(MARKER)),
}


@pytest.mark.parametrize("callable_name", list(HOSTILE))
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_code_in_a_pickle_never_runs(tmp_path: Path, callable_name: str, legacy: bool) -> None:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save(
        {"state_dict": STATE, "x": HOSTILE[callable_name]()}, path, _use_new_zipfile_serialization=not legacy
    )
    with pytest.raises(
        CheckpointError, match=rf"refused: it references {callable_name}.*nothing was executed"
    ):
        read_checkpoint(path)
    assert not MARKER.exists()


class CallableResult(Reduces):
    """A callable object that pickles as the result of a call: ``(callable(*args))(...)`` chains."""

    def __call__(self, *args: object) -> None:
        MARKER.touch()


def test_a_call_of_a_call_is_refused_without_calling_either(tmp_path: Path) -> None:
    """A reduce whose callable is itself the result of a reduce."""
    path = tmp_path / "nested.pt"
    torch.save({"state_dict": STATE, "x": Reduces(CallableResult(collections.OrderedDict), "arg")}, path)
    with pytest.raises(CheckpointError, match="not a known constructor"):
        read_checkpoint(path)


def test_raw_pickle_of_a_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(Reduces(os.system, f"touch {MARKER}"), protocol=2))
    with pytest.raises(CheckpointError, match=r"references posix\.system"):
        read_checkpoint(path)
    assert not MARKER.exists()


def test_no_tensors_at_all(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match="found no state dict"):
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


class Scripted(torch.nn.Module):
    """A TorchScript module whose __setstate__ writes a file when the archive is loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.x = torch.zeros(1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.x, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.x = state[0]
        self.training = state[1]
        torch.ops.aten.save(self.x, "/tmp/reparam-test-pwned")  # = MARKER (TorchScript takes literals)


def test_torchscript_archives_are_refused_before_any_code_runs(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Scripted()), str(path))
    for source in (path, path.read_bytes()):
        with pytest.raises(CheckpointError, match="TorchScript archive"):
            read_checkpoint(source)
    assert not MARKER.exists()


def shared_dag(levels: int) -> list:
    node: list = []
    for _ in range(levels):
        node = [node, node]  # 2**levels paths through `levels` objects
    return node


def cycle() -> list:
    loop: list = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "extra",
    [lambda: shared_dag(60), cycle, lambda: {"opt": collections.OrderedDict(a=shared_dag(40))}],
    ids=["shared-60-levels", "cycle", "shared-in-dict"],
)
def test_shared_and_cyclic_objects_are_read_once(tmp_path: Path, extra: object) -> None:
    path = tmp_path / "shared.pt"
    torch.save({"state_dict": STATE, "x": extra()}, path)  # type: ignore[operator]
    assert equal(read_checkpoint(path).state, STATE)


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    deep: list = []
    for _ in range(300):  # past the 200 levels followed (and within what torch.save can write)
        deep = [deep]
    path = tmp_path / "deep.pt"
    torch.save({"state_dict": STATE, "x": deep}, path)
    with pytest.raises(CheckpointError, match="nested deeper than"):
        read_checkpoint(path)


def test_broadcast_views_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "view.pt"
    torch.save({"w": torch.ones(1).expand(10**6, 10**6, 10**3)}, path)
    with pytest.raises(CheckpointError, match="view larger than its storage"):
        read_checkpoint(path)


def test_torch_bytes_and_parameters_come_back_as_plain_tensors(tmp_path: Path) -> None:
    path = tmp_path / "params.pt"
    torch.save({"w": torch.nn.Parameter(torch.ones(3)), "b": torch.zeros(2)}, path)
    state = read_checkpoint(path.read_bytes()).state
    assert (
        type(state["w"]) is torch.Tensor
        and not state["w"].requires_grad
        and torch.equal(state["b"], torch.zeros(2))
    )


def zip_bomb(path: Path, padding: int) -> Path:
    """A torch.save file re-zipped with deflate: ``padding`` zero bytes in data.pkl shrink ~1000x."""
    plain_zip = io.BytesIO()
    torch.save({"w": torch.ones(3), "pad": bytes(padding)}, plain_zip)
    plain_zip.seek(0)
    with zipfile.ZipFile(plain_zip) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return path


def test_a_zip_bomb_is_refused_before_anything_is_expanded(tmp_path: Path) -> None:
    bomb = zip_bomb(tmp_path / "bomb.pt", 256 << 20)
    assert bomb.stat().st_size < 1 << 20
    probe = (
        "import resource, sys\n"
        "from reparam_core import CheckpointError\n"
        "from reparam_core.checkpoints import read_checkpoint\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_checkpoint(sys.argv[1])\n"
        "except CheckpointError as exc:\n"
        "    print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe, str(bomb)], capture_output=True, text=True, check=True)
    message, grown_mb = run.stdout.strip().rsplit("\n", 1)
    assert "expands to" in message and int(grown_mb) < 64, run.stdout
