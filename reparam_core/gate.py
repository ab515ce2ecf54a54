"""The conversion gate: the fused net against the training net, in float64 and as it will be served,
and against the user's own model's outputs when a reference file comes with the checkpoint.
Why these checks, at these sizes, are enough: docs/gate.md.

float64, per block (:mod:`reparam_core.block_gate`): every training block against its deploy
layer with the float64 fused weights, on a probe input of the block's own geometry, bounded by
the caller's tolerance; and the stored weights against the float64 fused weights, elementwise,
bounded by the storage dtype's rounding. Whole net, in the stored precision (float32): the stored
net, rebuilt from its deploy spec, against the float64 training net on a
:func:`~reparam_core.probes.wiring_probe_size` input, bounded relative to the training net's *own*
error in that precision (deep nets amplify rounding differently; a deploy net may not be less
accurate than the net it replaces, up to ``SLACK``), with a floor per format; the serving
configuration likewise. Reference outputs: the float64 fused net against them, bounded by the
tolerance when they are float64, else by the same rule in their dtype (they carry the rounding
of the precision they were computed in). ``model.onnx``: run in ONNX Runtime
against the float64 training net, held to the stored net's bound.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import chain

import torch
from pydantic import BaseModel
from torch import Tensor, nn
from torch.func import functional_call

from .block_gate import WeightsReport, check_blocks
from .deploy import DeploySpec, PlainNet, ServingOptions, prepare_for_serving
from .deploy.runtimes import onnx_runner
from .equivalence import EquivalenceReport, measure, random_input, tf32_disabled
from .probes import wiring_probe_size
from .reference import Reference

SLACK = 10.0
FP32_FLOOR = 1e-5
# The floors (about 10x-80x each format's unit roundoff) only matter when the training net is
# itself unusually accurate in that precision.
REFERENCE_CHUNK = 8  # reference inputs through the float64 nets at a time (bounded memory)
FLOORS = {torch.float32: FP32_FLOOR, torch.float16: 1e-2, torch.bfloat16: 5e-2}
WIRING_BATCH = 2  # two samples: nothing in the net may mix them (pooling over the batch)


class ServingReport(BaseModel):
    """The serving configuration checked at conversion: its error against the float64 training net
    (``equivalence``), the training net's own error in the same precision (the baseline the bound
    is derived from), and what preparing it cost."""

    options: ServingOptions
    device: str
    equivalence: EquivalenceReport
    train_same_precision: EquivalenceReport
    compile_seconds: float | None
    warmup_seconds: float


def run_in(model: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """``model`` run in ``dtype`` without being modified or copied whole: its floating tensors are
    passed cast (those already in ``dtype`` as they are), so the float64 net itself is never rounded."""
    tensors = chain(model.named_parameters(), model.named_buffers())
    cast = {name: t.to(dtype) for name, t in tensors if t.is_floating_point()}
    return functional_call(model, cast, (x.to(dtype),))  # type: ignore[no-any-return]


@dataclass
class GateResult:
    fp64: list[EquivalenceReport]  # per block
    weights: WeightsReport  # the stored weights against the float64 fused weights
    stored: EquivalenceReport  # the stored (float32) net
    stored_train: EquivalenceReport  # the training net in the stored precision: the baseline
    first_input: Tensor  # the whole-net (wiring) input
    first_reference: Tensor  # the float64 training net's output on it


def run_gate(
    model: nn.Module, stored: PlainNet, device: torch.device, tolerance: float, seed: int
) -> GateResult:
    """The per-block float64 checks, streamed through the float64 training net's forward on a
    wiring-probe input; on that input, the stored net and (as the baseline it is held to) the
    training net in the stored precision, both against the float64 output. The input and output
    are kept for the serving check."""
    spec = stored.spec
    shape = (WIRING_BATCH, spec.in_channels, *wiring_probe_size(spec))
    x = random_input(shape, seed).to(device)
    dtype = next(stored.parameters()).dtype
    with tf32_disabled(), torch.inference_mode():
        blocks = check_blocks(model, stored, x, tolerance, seed)
        reference = blocks.output
        stored_train = measure(reference, run_in(model, x, dtype), shape, dtype, device, None)
        bound = max(FLOORS.get(dtype, FP32_FLOOR), SLACK * stored_train.max_rel_error)
        try:
            out = stored.to(device)(x.to(dtype))
            stored_report = measure(reference, out, shape, dtype, device, bound)
        except RuntimeError as exc:  # a deploy net that cannot run on the input is not equivalent
            failed = measure(reference, reference.new_empty(0), shape, dtype, device, bound)
            stored_report = failed.model_copy(update={"error": str(exc).splitlines()[0][:200]})
        finally:
            stored.to("cpu")
    return GateResult(blocks.fp64, blocks.weights, stored_report, stored_train, x, reference)


def check_serving(
    model: nn.Module,
    stored: PlainNet,
    deploy_spec: DeploySpec,
    options: ServingOptions,
    device: torch.device,
    gate: GateResult,
    onnx: bytes | None = None,
) -> ServingReport:
    """The stored net (or, for the ONNX runtimes, ``onnx``) prepared as ``options`` say (and warmed
    up, compiling if asked) against the float64 training net on the gate's first input, bounded by
    the training net's own error in the serving precision."""
    if options.onnx and onnx is None:
        raise ValueError(f"runtime {options.runtime} is checked on model.onnx: pass it")
    x, reference = gate.first_input, gate.first_reference
    shape = tuple(x.shape)
    dtype = options.dtype
    with tf32_disabled():
        if gate.stored_train.dtype == str(dtype).removeprefix("torch."):  # the gate ran it already
            baseline = gate.stored_train
        else:
            with torch.inference_mode():
                baseline = measure(reference, run_in(model, x, dtype), shape, dtype, device, None)
        net = onnx if options.onnx and onnx is not None else copy.deepcopy(stored)
        served = prepare_for_serving(net, deploy_spec, options, device, (1, shape[0]))
        output = served.logits(x.float()).to(reference.device)
    bound = max(FLOORS[dtype], SLACK * baseline.max_rel_error)
    return ServingReport(
        options=options,
        device=str(served.device),
        equivalence=measure(reference, output, shape, dtype, device, bound),
        train_same_precision=baseline,
        compile_seconds=served.compile_seconds,
        warmup_seconds=served.warmup_seconds,
    )


def check_onnx(onnx: bytes, gate: GateResult) -> EquivalenceReport:
    """``model.onnx`` in ONNX Runtime (CPU, float32) against the float64 training net on the gate's
    first input, held to the stored float32 net's bound."""
    x, reference = gate.first_input, gate.first_reference
    output = onnx_runner("onnxruntime", onnx, "fp32")(x.detach().float().cpu()).to(reference.device)
    bound = max(FP32_FLOOR, SLACK * gate.stored_train.max_rel_error)
    report = measure(reference, output, tuple(x.shape), torch.float32, "cpu", bound)
    return report.model_copy(update={"dtype": f"onnx {report.dtype}"})


def check_onnx_export(onnx: bytes, stored: PlainNet, seed: int = 0) -> EquivalenceReport:
    """``model.onnx`` written after the conversion (the training net is gone by then) in ONNX Runtime
    against the stored net run in float64 on a wiring-probe input: the stored weights are what the
    gate held to the float64 training net, so this links the file to it. Bounded like the stored
    net: by ``SLACK`` times the stored net's own float32 error on the same input, with a floor."""
    spec = stored.spec
    shape = (WIRING_BATCH, spec.in_channels, *wiring_probe_size(spec))
    x = random_input(shape, seed)
    with tf32_disabled(), torch.inference_mode():
        reference = run_in(stored, x, torch.float64)
        baseline = measure(reference, run_in(stored, x, torch.float32), shape, torch.float32, "cpu", None)
    output = onnx_runner("onnxruntime", onnx, "fp32")(x.float())
    bound = max(FP32_FLOOR, SLACK * baseline.max_rel_error)
    report = measure(reference, output, shape, torch.float32, "cpu", bound)
    return report.model_copy(update={"dtype": f"onnx {report.dtype}"})


def check_reference(
    model: nn.Module, deploy: nn.Module, reference: Reference, device: torch.device, tolerance: float
) -> EquivalenceReport:
    """The float64 fused net on the reference inputs (``REFERENCE_CHUNK`` at a time) against the
    user's outputs. ``model`` (the float64 training net) gives the rounding baseline, on the first
    chunk, when the outputs are not float64."""
    dtype = reference.dtype
    x = reference.inputs.to(device=device, dtype=torch.float64)
    shape = tuple(x.shape)
    with tf32_disabled(), torch.inference_mode():
        ours = torch.cat([deploy(chunk) for chunk in x.split(REFERENCE_CHUNK)])
        if dtype == torch.float64:
            bound = tolerance
        else:
            first = x[:REFERENCE_CHUNK]
            baseline = measure(model(first), run_in(model, first, dtype), first.shape, dtype, device, None)
            bound = max(FLOORS.get(dtype, FP32_FLOOR), SLACK * baseline.max_rel_error)
    report = measure(
        reference.outputs.to(device=device, dtype=torch.float64), ours, shape, dtype, device, bound
    )
    return report.model_copy(update={"dtype": f"reference {report.dtype}"})
