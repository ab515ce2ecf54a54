"""Serving fast paths: each option is applied, checked at conversion, and refused when it breaks."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from reparam_core import conversion
from reparam_core.conversion import convert
from reparam_core.deploy import (
    ONNX,
    ServingModel,
    ServingOptions,
    cpu,
    load_for_serving,
    parse_serving,
    prepare_for_serving,
    serving,
)
from reparam_core.deploy.cpu import capabilities_from
from reparam_core.equivalence import compare_outputs
from reparam_core.errors import ConversionError, EquivalenceError, ReparamError, SpecError
from tests.helpers import NATIVE_BF16, TINY, state_of


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return state_of(TINY)


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "fp32", "channels_last": False, "inference_mode": False},
        {"precision": "fp32", "channels_last": True},
        {"precision": "fp16"},
        pytest.param({"precision": "bf16", "channels_last": False}, marks=NATIVE_BF16),
        {"runtime": "onnxruntime", "precision": "fp32"},
        {"runtime": "openvino", "precision": "fp32"},
        pytest.param({"runtime": "openvino", "precision": "bf16"}, marks=NATIVE_BF16),
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
    assert serving.options.runtime == options.get("runtime", "torch")
    if serving.options.runtime != "torch":  # model.onnx, served on the CPU, checked in ONNX Runtime too
        assert serving.device == "cpu" and result.onnx is not None and "onnx" in result.timings
        assert result.report.onnx is not None and result.report.onnx.passed
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


@NATIVE_BF16
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
    with pytest.raises(
        SpecError, match=r"serving\.precision: Input should be 'fp32', 'fp16', 'bf16' or 'int8'"
    ):
        parse_serving('{"precision": "fp8"}')
    with pytest.raises(SpecError, match=r"runtime torch does not serve precision int8"):
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


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (
            {"runtime": "onnxruntime", "precision": "bf16"},
            "runtime onnxruntime does not serve precision bf16",
        ),
        (
            {"runtime": "onnxruntime", "precision": "fp16"},
            "runtime onnxruntime does not serve precision fp16",
        ),
        ({"runtime": "openvino", "precision": "fp16"}, "runtime openvino does not serve precision fp16"),
    ],
)
def test_runtime_and_precision_combinations_that_do_not_serve_are_refused(
    options: dict, problem: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_serving(options)
    message = str(info.value)
    assert problem in message
    assert "valid combinations: torch: fp32|fp16|bf16; onnxruntime: fp32|int8; openvino: fp32|bf16" in message


def test_runtime_options_are_parsed_strictly() -> None:
    assert ServingOptions().runtime == "torch"
    assert parse_serving('{"runtime": "openvino", "precision": "bf16"}').onnx
    with pytest.raises(
        SpecError, match=r"serving\.runtime: Input should be 'torch', 'onnxruntime' or 'openvino'"
    ):
        parse_serving('{"runtime": "tensorrt"}')
    with pytest.raises(
        SpecError, match=r"compile is torch.compile: runtime onnxruntime has no compile option"
    ):
        parse_serving({"runtime": "onnxruntime", "compile": True})


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"runtime": "openvino", "precision": "bf16"}])
def test_bf16_is_refused_on_a_cpu_without_native_bf16(
    state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch, options: dict
) -> None:
    old = capabilities_from("Old CPU", {"avx2", "avx512f"}, "AVX512", "test")
    monkeypatch.setattr(serving, "cpu_capabilities", lambda: old)
    with pytest.raises(
        SpecError, match=r"bf16 on the CPU needs native bf16 .* \(Old CPU\) has avx2, avx512f"
    ):
        convert(TINY, state, serving=ServingOptions(**options))
    assert serving.served_precisions("openvino", "cpu") == ["fp32"]
    assert serving.served_precisions("torch", "cpu") == ["fp32", "fp16"]


def test_onnx_artifact_is_checked_against_the_fp64_training_net_and_saved(
    state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    result = convert(TINY, state, onnx=True)
    check = result.report.onnx
    assert result.onnx is not None and check is not None and check.passed
    stored = result.report.fp32
    assert stored is not None and check.dtype == "onnx float32"
    assert check.input_shape == stored.input_shape != [2, 3, 32, 24]  # the gate's small input
    assert check.tolerance is not None and 1e-9 < check.max_rel_error <= check.tolerance
    assert check.top1_agreement == 1.0
    digests = result.save(tmp_path / "out", export=False)
    assert (tmp_path / "out" / ONNX).read_bytes() == result.onnx and ONNX in digests
    # Batch, height and width are dynamic: every ONNX runtime reproduces the net at other sizes.
    eager = ServingModel(result.deploy_model, ServingOptions(channels_last=False), "cpu")
    for runtime in ("onnxruntime", "openvino"):
        served = load_for_serving(tmp_path / "out", ServingOptions(runtime=runtime), "cpu", (1,))
        assert served.eager is None
        for x in (torch.randn(5, 3, 32, 24), torch.randn(2, 3, 41, 17)):
            assert compare_outputs(eager.logits(x), served.logits(x))["max_rel_error"] < 1e-5


def test_without_onnx_no_onnx_stage_and_a_runtime_without_model_onnx_is_refused(
    state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    result = convert(TINY, state)
    assert result.onnx is None and result.report.onnx is None and "onnx" not in result.timings
    result.save(tmp_path / "out", export=False)
    assert not (tmp_path / "out" / ONNX).exists()
    with pytest.raises(ReparamError, match=r"runtime onnxruntime serves model.onnx, which .* does not hold"):
        load_for_serving(tmp_path / "out", ServingOptions(runtime="onnxruntime"), "cpu", (1,))


def test_a_wrong_onnx_model_fails_the_gate(
    state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ONNX check can fail: an exported net whose classifier bias is off by 1% is refused."""
    real = conversion.export_onnx

    def off_by_one_percent(model: torch.nn.Module, shape: tuple[int, int, int]) -> bytes:
        bent = copy.deepcopy(model)
        with torch.no_grad():
            list(bent.parameters())[-1].mul_(1.01)
        return real(bent, shape)

    monkeypatch.setattr(conversion, "export_onnx", off_by_one_percent)
    with pytest.raises(EquivalenceError, match=r"onnx float32 at 2x3x\d+x\d+: max relative error") as info:
        convert(TINY, state, onnx=True)
    assert info.value.report.onnx is not None and not info.value.report.onnx.passed
    assert all(r.passed for r in info.value.report.fp64)


def test_cpu_capabilities_come_from_cpuinfo_flags() -> None:
    text = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n"
    model, flags = cpu.parse_cpuinfo(text)
    caps = capabilities_from(model, flags, "AVX512", "test")
    assert caps.model == "Some CPU" and caps.flags() == ["avx2", "avx512f", "avx512_bf16"] and caps.bf16
    amx = capabilities_from("AMX CPU", {"avx2", "amx_bf16", "amx_int8"}, "AVX512", "test")
    assert amx.bf16 and amx.flags() == ["avx2", "amx_bf16", "amx_int8"]
    assert not capabilities_from("", {"avx2"}, "AVX2", "test").bf16
