"""Serving fast paths: each option is applied, checked at conversion, and refused when it breaks."""

from __future__ import annotations

import pytest
import torch

from reparam_core.conversion import convert
from reparam_core.deploy import ServingModel, ServingOptions, parse_serving, prepare_for_serving, serving
from reparam_core.equivalence import compare_outputs
from reparam_core.errors import ConversionError, EquivalenceError, SpecError
from tests.helpers import TINY, state_of


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return state_of(TINY)


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "fp32", "channels_last": False, "inference_mode": False},
        {"precision": "fp32", "channels_last": True},
        {"precision": "fp16"},
        {"precision": "bf16", "channels_last": False},
    ],
)
def test_serving_configuration_is_checked_against_the_fp64_training_net(
    state: dict[str, torch.Tensor], options: dict
) -> None:
    result = convert(TINY, state, serving=ServingOptions(**options))
    serving = result.report.serving
    assert serving is not None and result.report.passed and "serving" in result.timings
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[options["precision"]]
    assert serving.equivalence.dtype == serving.train_same_precision.dtype == dtype
    assert serving.equivalence.passed and serving.equivalence.top1_agreement is not None
    assert serving.equivalence.tolerance is not None
    assert serving.equivalence.max_rel_error <= serving.equivalence.tolerance
    assert serving.compile_seconds is None and serving.warmup_seconds > 0
    # The error grows with the format's unit roundoff: float32 ~1e-7, float16 ~1e-3, bfloat16 ~1e-2.
    eps = torch.finfo(getattr(torch, dtype)).eps
    assert eps / 100 <= serving.equivalence.max_rel_error <= 100 * eps


def test_serving_precision_failure_refuses_the_conversion(
    state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serving net that overflows (here: forced to inf) fails the gate with its own line."""
    real = ServingModel.logits

    def overflowing(self: ServingModel, batch: torch.Tensor) -> torch.Tensor:
        return real(self, batch) * float("inf")

    monkeypatch.setattr(ServingModel, "logits", overflowing)
    with pytest.raises(EquivalenceError, match=r"float16 at 2x3x9x10: max relative error inf") as info:
        convert(TINY, state, serving=ServingOptions(precision="fp16"))
    assert info.value.report.serving.equivalence.passed is False
    assert all(r.passed for r in info.value.report.fp64)


def test_without_serving_options_no_serving_stage(state: dict[str, torch.Tensor]) -> None:
    result = convert(TINY, state)
    assert result.report.serving is None and "serving" not in result.timings


def test_channels_last_and_precision_are_applied(state: dict[str, torch.Tensor]) -> None:
    model = convert(TINY, state).deploy_model
    served = ServingModel(model, ServingOptions(precision="bf16", channels_last=True), "cpu")
    weight = next(p for p in served.eager.parameters() if p.ndim == 4)
    assert weight.dtype == torch.bfloat16 and weight.is_contiguous(memory_format=torch.channels_last)
    probabilities = served.probabilities(torch.randn(3, 3, 32, 24))
    assert probabilities.dtype == torch.float32 and probabilities.shape == (3, 5)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(3), atol=1e-5)


def test_inference_mode_option_selects_the_grad_mode(state: dict[str, torch.Tensor]) -> None:
    model = convert(TINY, state).deploy_model
    x = torch.randn(1, 3, 32, 24)
    with_mode = ServingModel(model, ServingOptions(inference_mode=True), "cpu").logits(x)
    without = ServingModel(model, ServingOptions(inference_mode=False), "cpu").logits(x)
    assert with_mode.is_inference() and not without.is_inference() and not without.requires_grad


def test_compiled_serving_reports_compile_time_and_matches_eager(state: dict[str, torch.Tensor]) -> None:
    result = convert(TINY, state, serving=ServingOptions(compile=True, warmup_iterations=1))
    serving = result.report.serving
    assert serving is not None and serving.equivalence.passed
    assert serving.compile_seconds is not None and serving.compile_seconds > 0
    assert serving.warmup_seconds >= serving.compile_seconds
    served = prepare_for_serving(result.deploy_model, result.deploy_spec, serving.options, "cpu", (1, 4))
    x = torch.randn(3, 3, 32, 24)  # a batch size not warmed up: served by the dynamic-batch graph
    eager = ServingModel(result.deploy_model, ServingOptions(), "cpu").logits(x)
    assert compare_outputs(eager, served.logits(x))["max_rel_error"] < 1e-5


def test_compile_without_a_cpp_compiler_is_refused_up_front(
    state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(serving.shutil, "which", lambda name: None)
    with pytest.raises(SpecError, match=r"serving.compile on the CPU needs a C\+\+ compiler"):
        convert(TINY, state, serving=ServingOptions(compile=True))


def test_a_failing_compile_is_a_conversion_error_naming_the_cause(
    state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object) -> torch.Tensor:
        raise RuntimeError("Unsupported: some operator\nlong traceback follows")

    monkeypatch.setattr(serving.torch, "compile", lambda module, **options: unsupported)
    with pytest.raises(
        ConversionError,
        match=r"\(mode 'max-autotune'\) failed on cpu: RuntimeError: Unsupported: some operator$",
    ):
        convert(TINY, state, serving=ServingOptions(compile=True, compile_mode="max-autotune"))


def test_options_are_parsed_strictly() -> None:
    assert parse_serving(None) == ServingOptions() == parse_serving("  ")
    assert parse_serving('{"precision": "fp16"}').precision == "fp16"
    with pytest.raises(SpecError, match=r"serving\.precision: Input should be 'fp32', 'fp16' or 'bf16'"):
        parse_serving('{"precision": "int8"}')
    with pytest.raises(SpecError, match=r"serving\.channel_last: Extra inputs are not permitted"):
        parse_serving({"channel_last": True})
    with pytest.raises(SpecError, match=r"serving: Invalid JSON"):
        parse_serving("{precision")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda(state: dict[str, torch.Tensor], precision: str) -> None:
    result = convert(TINY, state, device="cuda", serving=ServingOptions(precision=precision))
    serving = result.report.serving
    assert serving is not None and serving.device.startswith("cuda") and serving.equivalence.passed
    assert serving.equivalence.top1_agreement == 1.0
