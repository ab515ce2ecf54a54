"""The conversion pipeline: checkpoint + spec -> verified plain deploy net.

Steps (each timed): read the checkpoint safely, build the training net without allocating
weights, map and strictly check the keys, load in float64 on the device, fuse every block into the
storage dtype (these memory-bound steps on one intra-op thread, see :mod:`.threads`), prove
equivalence (docs/gate.md: every block against its fused layer in float64 on a probe input of its
own geometry, the stored weights against the float64 fused weights, and the stored net against the
float64 training net on a small whole-net input, bounded by the training net's own error in the
stored precision); optionally export ``model.onnx`` and check it in ONNX Runtime against the
float64 training net. With calibration inputs, the quantization report (:mod:`.quantization`)
diagnoses per fused layer whether the net will survive INT8; serving precision int8 adds
``model.int8.onnx`` (ONNX Runtime static quantization), refused below the minimum top-1 agreement
with the float32 net on held-out inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from .arch import ArchSpec, build_train_model, parse_spec
from .block_gate import WeightsReport
from .checkpoints import Weights, check_values, fits, load_into, read_checkpoint
from .deploy import (
    CpuCapabilities,
    DeploySpec,
    PlainNet,
    ServingOptions,
    build_deploy_model,
    cpu_capabilities,
    export_onnx,
    write_artifacts,
)
from .equivalence import EquivalenceReport, resolve_device
from .errors import CheckpointError, EquivalenceError, SpecError
from .fusion.row_blocks import fused_state_dict
from .fusion.swap import count_convs, reparameterize
from .gate import ServingReport, check_onnx, check_reference, check_serving, run_gate
from .quantization import (
    Int8Report,
    QuantizationReport,
    check_float_layers,
    fused_layers,
    quantization_report,
    quantize_gated,
    read_calibration,
    split_calibration,
)
from .reference import Reference, read_reference
from .threads import intra_op_threads


class ConversionReport(BaseModel):
    """What was converted and how closely the deploy net reproduces the training net."""

    arch: str
    checkpoint_format: str
    checkpoint_notes: list[str]
    weights: str = "only"  # which weights of the checkpoint: model, ema, or only (no choice)
    device: str
    tolerance: float
    passed: bool
    fp64: list[EquivalenceReport]  # per block (``where``: its name)
    fp32: EquivalenceReport | None  # the stored net, whole
    fp32_train: EquivalenceReport | None
    stored_weights: WeightsReport | None = None
    serving: ServingReport | None = None
    reference: EquivalenceReport | None = None  # against the user's own outputs, when given
    onnx: EquivalenceReport | None = None  # model.onnx in ONNX Runtime, when exported
    quantization: QuantizationReport | None = None  # per-layer INT8 diagnosis, with calibration inputs
    int8: Int8Report | None = None  # model.int8.onnx against the float32 net (serving precision int8)
    cpu: CpuCapabilities | None = None  # the CPU this conversion ran on
    params_train: int
    params_deploy: int
    convs_train: int
    convs_deploy: int
    torch_version: str


@dataclass
class ConversionResult:
    deploy_model: PlainNet
    deploy_spec: DeploySpec
    report: ConversionReport
    timings: dict[str, float] = field(default_factory=dict)
    onnx: bytes | None = None  # model.onnx, when exported
    onnx_int8: bytes | None = None  # model.int8.onnx, for serving precision int8

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().contiguous() for k, v in self.deploy_model.state_dict().items()}

    def save(self, out_dir: str | Path, *, export: bool = True) -> dict[str, str]:
        """Write the artifacts (weights, deploy spec, report, optionally the exported program, and
        ``model.onnx`` when it was exported) to ``out_dir``, atomically; returns the sha256 of every
        file."""
        report = {"report": self.report.model_dump(mode="json"), "timings": self.timings}
        return write_artifacts(
            self.deploy_model,
            self.deploy_spec,
            report,
            out_dir,
            export=export,
            onnx=self.onnx,
            onnx_int8=self.onnx_int8,
        )


class _Timer:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.timings[name] = round(time.perf_counter() - start, 6)


def _fitting_presets(arch: ArchSpec, state: dict[str, Tensor]) -> str:
    """``; it fits repvgg variant A1`` when another preset of the family has exactly these
    tensors (a wrong ``variant`` otherwise shows as hundreds of shape mismatches), or ``; it fits
    block qarepvgg_v1`` when another of the few blocks the family allows does, else ``""``."""
    variants = [
        variant
        for variant in (arch.family_info.presets if arch.variant is not None else ())
        if variant != arch.variant
        and fits(build_train_model(arch.model_copy(update={"variant": variant}), device="meta"), state)
    ]
    blocks = [
        block
        for block in sorted(arch.family_info.allowed_blocks or ())
        if block != arch.block_family
        and fits(build_train_model(arch.model_copy(update={"block": block}), device="meta"), state)
    ]
    hints = [f"{arch.family} variant {' or '.join(variants)}"] if variants else []
    hints += [f"block {' or '.join(blocks)}"] if blocks else []
    return f"; it fits {' and '.join(hints)}" if hints else ""


def convert(
    spec: ArchSpec | dict[str, Any] | str | Path,
    checkpoint: str | Path | bytes | dict[str, Tensor],
    *,
    device: str | torch.device = "auto",
    validate: bool = True,
    tolerance: float = 1e-9,
    storage_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    checkpoint_name: str | None = None,
    serving: ServingOptions | None = None,
    weights: Weights = "auto",
    reference: str | Path | bytes | dict[str, Tensor] | Reference | None = None,
    onnx: bool = False,
    calibration: str | Path | bytes | Tensor | None = None,
) -> ConversionResult:
    """Convert a training checkpoint to a verified deploy net. Raises ``EquivalenceError`` (with the
    report attached) when the gate fails, ``CheckpointError``/``SpecError`` for bad input.
    ``progress`` is called with each stage's name as it starts; ``checkpoint_name`` is how errors
    name the checkpoint (default: its path). With ``serving``, the net prepared that way (precision,
    memory format, compilation) is checked too, in its own stage, and held to the same bound
    relative to the training net run in that precision. ``weights`` picks the model or EMA weights
    of a checkpoint that has both (``auto``: the model's). With ``reference`` (a safetensors file
    of ``inputs`` and the user's own model's ``outputs``, see :mod:`reparam_core.reference`), the
    fused net is also held to those outputs. With ``onnx`` (implied by a ``serving`` runtime other
    than torch), the float32 deploy net is exported to ONNX (``result.onnx``, saved as
    ``model.onnx``; needs the ``service`` extra) and, with ``validate``, checked in ONNX Runtime
    against the float64 training net (``report.onnx``). With ``calibration`` (preprocessed inputs
    ``[N, C, H, W]``, at most 64, or a safetensors file of ``inputs``), ``report.quantization``
    diagnoses each fused layer for INT8. Serving precision int8 (runtime onnxruntime) quantizes
    ``model.onnx`` statically (``result.onnx_int8``, saved as ``model.int8.onnx``), calibrated on
    three quarters of those inputs (or, without them, of the reference's inputs), and holds it to
    ``serving.int8_min_agreement`` top-1 agreement with the float32 net on the other quarter
    (``report.int8``); ``serving.int8_float_layers`` keeps the layers the quantization report ranks
    worst in float32 (mixed precision)."""
    timer = _Timer(progress)
    target = resolve_device(device)
    with intra_op_threads():  # memory-bound stages: see reparam_core.threads
        with timer.stage("parse"):
            arch = parse_spec(spec)
        with timer.stage("read"):
            if isinstance(checkpoint, dict):
                state, notes, chosen = dict(checkpoint), list[str](), "only"
            else:
                state, notes, chosen = read_checkpoint(checkpoint, checkpoint_name, weights)
            check_values(state)
            expected = None
            if reference is not None and not validate:
                raise SpecError("a reference needs the equivalence gate (validate=True)")
            if reference is not None:
                expected = (
                    reference
                    if isinstance(reference, Reference)
                    else read_reference(reference, arch.in_channels, arch.num_classes, arch.input_size)
                )
            inputs = _calibration_inputs(arch, calibration, expected, serving)
        with timer.stage("build"):
            model = build_train_model(arch, device="meta")
            try:
                fmt = load_into(model, state, target)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc}{_fitting_presets(arch, state)}") from None
            model.eval()
        with timer.stage("fuse"):
            fused = fused_state_dict(model, storage_dtype)
        with timer.stage("assemble"):
            deploy_spec = model.deploy_spec(meta={"arch_spec": arch.model_dump(mode="json")})
            stored = _storage_model(deploy_spec, fused)
            if serving is not None and serving.precision == "int8":  # before the report's minute
                check_float_layers(serving.int8_float_layers, [n for n, _ in fused_layers(stored)])
    fp64: list[EquivalenceReport] = []
    fp32 = fp32_train = stored_weights = served = against_reference = onnx_check = None
    onnx_model = None
    if onnx or (serving is not None and serving.onnx):
        with timer.stage("onnx"):
            onnx_model = export_onnx(stored, deploy_spec.sample_shape())
    quantization = int8 = onnx_int8 = None
    if inputs is not None:
        with timer.stage("quantization"):
            quantization = quantization_report(stored, inputs)
    if (
        serving is not None
        and serving.precision == "int8"
        and inputs is not None
        and quantization is not None
        and onnx_model
    ):
        with timer.stage("int8"):
            fit, held_out = split_calibration(inputs)
            onnx_int8, int8 = quantize_gated(
                onnx_model,
                stored,
                quantization,
                fit,
                held_out,
                serving.int8_min_agreement,
                serving.int8_float_layers,
            )
    if validate:
        with timer.stage("validate"):
            gate = run_gate(model, stored, target, tolerance, seed)
            fp64, fp32, fp32_train = gate.fp64, gate.stored, gate.stored_train
            stored_weights = gate.weights
            if expected is not None:  # the user's inputs: the whole float64 fused net
                deploy = reparameterize(model.double())
                against_reference = check_reference(model, deploy, expected, target, tolerance)
            if onnx_model is not None:
                onnx_check = check_onnx(onnx_model, gate)
        if serving is not None and serving.precision != "int8":  # int8: held to agreement instead
            with timer.stage("serving"):
                served = check_serving(model, stored, deploy_spec, serving, target, gate, onnx_model)
    report = ConversionReport(
        arch=arch.name,
        checkpoint_format=fmt,
        checkpoint_notes=notes,
        weights=chosen,
        device=str(target),
        tolerance=tolerance,
        passed=all(r.passed for r in fp64)
        and (stored_weights is None or stored_weights.passed)
        and (fp32 is None or fp32.passed)
        and (served is None or served.equivalence.passed)
        and (against_reference is None or against_reference.passed)
        and (onnx_check is None or onnx_check.passed)
        and (int8 is None or int8.passed),
        fp64=fp64,
        fp32=fp32,
        fp32_train=fp32_train,
        stored_weights=stored_weights,
        serving=served,
        reference=against_reference,
        onnx=onnx_check,
        quantization=quantization,
        int8=int8,
        cpu=cpu_capabilities(),
        params_train=_params(model),
        params_deploy=_params(stored),
        convs_train=count_convs(model),
        convs_deploy=count_convs(stored),
        torch_version=torch.__version__,
    )
    if validate and not report.passed:
        raise EquivalenceError(f"equivalence gate failed for {arch.name}: {_failures(report)}", report)
    return ConversionResult(stored, deploy_spec, report, timer.timings, onnx_model, onnx_int8)


def _calibration_inputs(
    arch: ArchSpec,
    calibration: str | Path | bytes | Tensor | None,
    reference: Reference | None,
    serving: ServingOptions | None,
) -> Tensor | None:
    """The calibration inputs, checked: those given, else (for serving precision int8) the
    reference's inputs; ``SpecError`` when int8 has neither."""
    if calibration is not None:
        return read_calibration(calibration, arch.in_channels, arch.input_size)
    if serving is None or serving.precision != "int8":
        return None
    if reference is None:
        raise SpecError(
            "serving.precision int8 needs calibration inputs to quantize on: give calibration inputs "
            "(images with POST /convert) or a reference file (its inputs are used)"
        )
    return read_calibration(reference.inputs, arch.in_channels, arch.input_size)


def _failures(report: ConversionReport) -> str:
    failed = [r for r in report.fp64 if not r.passed]
    if report.fp32 is not None and not report.fp32.passed:
        failed.append(report.fp32)
    if report.serving is not None and not report.serving.equivalence.passed:
        failed.append(report.serving.equivalence)
    if report.reference is not None and not report.reference.passed:
        failed.append(report.reference)
    if report.onnx is not None and not report.onnx.passed:
        failed.append(report.onnx)
    messages = [
        f"{r.dtype} at {r.where + ' on ' if r.where else ''}{'x'.join(map(str, r.input_shape))}: "
        + (f"fails to run ({r.error})" if r.error else f"max relative error {r.max_rel_error:.3e}")
        + f" > tolerance {r.tolerance or 0:.3g}"
        for r in failed
    ]
    if report.int8 is not None and not report.int8.passed:
        messages.append(_int8_failure(report.int8, report.quantization))
    weights = report.stored_weights
    if weights is not None and not weights.passed:
        messages.append(
            f"stored {weights.dtype} weights of {weights.where}: max elementwise relative difference "
            f"from the float64 fused weights {weights.max_rel_error:.3e} > {weights.tolerance:.3g}"
        )
    return "; ".join(messages)


def _int8_failure(int8: Int8Report, quantization: QuantizationReport | None) -> str:
    message = (
        f"int8 top-1 agreement with the float32 net {int8.top1_agreement:.3f} < {int8.min_agreement:g} "
        f"on {int8.held_out_samples} held-out inputs (logits relative error {int8.logits_rel_error:.3e})"
    )
    if int8.float_layers:
        every = int8.trials[0]
        message += (
            f" with {', '.join(int8.float_layers)} kept float32 (int8_float_layers "
            f"{int8.float_layers_option}; every layer int8: agreement {every.top1_agreement:.3f})"
        )
    if quantization is not None:
        worst = ", ".join(
            f"{name} (alone in int8: logits error {layer.int8.logits_rel_error:.3e}, weight outlier "
            f"ratio {layer.outlier_ratio:.1f})"
            for name in quantization.worst_layers
            for layer in [quantization.layer(name)]
        )
        message += f"; worst layers: {worst}"
    return message


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _storage_model(spec: DeploySpec, weights: dict[str, Tensor]) -> PlainNet:
    """The deploy net rebuilt from its spec alone (as a server will), holding ``weights`` on the CPU."""
    with torch.device("meta"):
        plain = build_deploy_model(spec)
    plain.load_state_dict({k: v.to("cpu") for k, v in weights.items()}, strict=True, assign=True)
    return plain.eval()
