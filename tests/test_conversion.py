"""The conversion pipeline: the gate, strict key checking, and what bad input gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from reparam_core import CheckpointError, EquivalenceError, PlainNet
from reparam_core.arch import build_train_model
from reparam_core.conversion import convert
from tests.helpers import TINY, randomize_, state_of


@pytest.mark.parametrize(
    "block", ["repvgg", "acb", "dbb", "orepa", "csla", "conv_bn", "mobileone", "orepa_large", "orepa_vgg"]
)
def test_every_block_family_converts_through_the_pipeline(block: str) -> None:
    kernel = 5 if block == "orepa_large" else 3
    groups = [1, 1] if block in {"orepa_large", "orepa_vgg"} else [1, 2]  # what the official ones take
    spec = {
        **TINY,
        "block": block,
        "stages": [{"depth": 2, "width": 8, "kernel_size": kernel, "groups": groups}],
        "padding_mode": "reflect",
        "stem": {"width": 8, "kernel_size": kernel},
    }
    result = convert(spec, state_of(spec))
    report = result.report
    assert report.passed and all(r.max_rel_error <= 1e-12 for r in report.fp64)
    assert report.fp32 is not None and report.fp32_train is not None and report.fp32.passed
    assert report.convs_deploy == 3 and isinstance(result.deploy_model, PlainNet)
    assert next(result.deploy_model.parameters()).dtype == torch.float32
    assert set(result.timings) == {"parse", "read", "build", "fuse", "assemble", "validate"}


def test_gate_checks_every_block_on_its_own_probe_and_the_stored_net_whole() -> None:
    report = convert(TINY, state_of(TINY)).report
    assert [r.where for r in report.fp64] == ["stem", "stages.0.0", "stages.0.1", "stages.1.0"]
    assert [r.input_shape for r in report.fp64] == [[1, 3, 5, 6], [1, 8, 5, 6], [1, 8, 3, 4], [1, 8, 5, 6]]
    assert report.fp32 is not None and report.fp32.input_shape == [2, 3, 9, 10]  # 3 strides: >= 3 px each
    assert report.stored_weights is not None and report.stored_weights.passed
    assert report.stored_weights.max_rel_error <= report.stored_weights.tolerance == 2.0**-23


def test_gate_failure_raises_with_the_report_naming_the_block() -> None:
    with pytest.raises(
        EquivalenceError, match=r"float64 at stem on 1x3x5x6: max relative error .* > tolerance 1e-30"
    ) as info:
        convert(TINY, state_of(TINY), tolerance=1e-30)  # fp64 rounding alone exceeds this
    assert info.value.report is not None and not info.value.report.passed


def test_a_wrong_fusion_is_caught_by_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    from reparam_core.blocks import branches

    real = branches.parallel_kernel_bias

    def off_by_a_bit(*args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        kernel, bias = real(*args, **kwargs)  # type: ignore[arg-type]
        return kernel, bias + 1e-6

    monkeypatch.setattr("reparam_core.blocks.repvgg.parallel_kernel_bias", off_by_a_bit)
    with pytest.raises(EquivalenceError):
        convert(TINY, state_of(TINY))


def test_wrong_family_is_named() -> None:
    mobile = {"family": "mobileone", "variant": "S0", "num_classes": 5}
    with pytest.raises(CheckpointError, match=r"does not fit the spec.*look like a 'mobileone' checkpoint"):
        convert({"family": "repvgg", "variant": "A0", "num_classes": 5}, state_of(mobile))


def test_missing_extra_and_mismatched_keys_are_all_listed() -> None:
    state = state_of(TINY)
    del state["stages.0.1.conv_1x1.conv.weight"]
    state["stages.0.1.extra.weight"] = torch.zeros(1)
    state["head.fc.weight"] = torch.zeros(3, 16)
    with pytest.raises(CheckpointError) as info:
        convert(TINY, state)
    message = str(info.value)
    assert "missing 1 tensors: stages.0.1.conv_1x1.conv.weight" in message
    assert "unexpected 1 tensors: stages.0.1.extra.weight" in message
    assert "head.fc.weight: checkpoint (3, 16) vs model (5, 16)" in message


def test_deploy_form_checkpoint_is_refused() -> None:
    fused = convert(TINY, state_of(TINY)).state_dict()
    with pytest.raises(CheckpointError, match="already fused"):
        convert(TINY, fused)
    official = {k.replace("stem.conv.", "stage0.rbr_reparam."): v for k, v in fused.items()}
    with pytest.raises(CheckpointError, match="deploy form"):
        convert(TINY, official)


def test_nan_weights_are_refused_before_anything_runs() -> None:
    state = state_of(TINY)
    state["stem.conv_kxk.conv.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN/Inf values in 1 tensors: stem\.conv_kxk\.conv\.weight"):
        convert(TINY, state)


def test_missing_num_batches_tracked_is_tolerated() -> None:
    state = {k: v for k, v in state_of(TINY).items() if not k.endswith("num_batches_tracked")}
    assert convert(TINY, state).report.passed


def test_half_precision_checkpoint_fuses_in_float64() -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in state_of(TINY).items()}
    report = convert(TINY, state).report
    assert report.passed and max(r.max_rel_error for r in report.fp64) <= 1e-12


def test_skip_validation() -> None:
    result = convert(TINY, state_of(TINY), validate=False)
    assert result.report.fp64 == [] and result.report.fp32 is None and "validate" not in result.timings


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_conversion_on_cuda() -> None:
    result = convert(TINY, state_of(TINY), device="cuda")
    assert result.report.device.startswith("cuda") and result.report.passed
    assert all(r.max_rel_error <= 1e-12 for r in result.report.fp64)
    assert next(result.deploy_model.parameters()).device.type == "cpu"


def test_float64_checkpoints_keep_their_precision_through_the_gate() -> None:
    """The gate's lower-precision baselines run on copies: a training net with weights float32
    cannot represent passes at 1e-12 on every gate shape (it failed at 3e-8 when they did not)."""
    model = randomize_(build_train_model(TINY).double(), seed=2)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 1e-9)
    report = convert(TINY, model.state_dict(), tolerance=1e-12).report
    assert report.passed and all(r.max_rel_error <= 1e-12 for r in report.fp64)


def test_a_wrong_variant_names_the_preset_the_checkpoint_fits(tmp_path: Path) -> None:
    path = tmp_path / "a1.pth"
    torch.save(build_train_model({"family": "repvgg", "variant": "A1", "num_classes": 10}).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*; it fits repvgg variant A1$"):
        convert({"family": "repvgg", "variant": "A0", "num_classes": 10}, path, device="cpu")
