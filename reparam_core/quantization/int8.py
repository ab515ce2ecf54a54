"""INT8 ``model.int8.onnx``: ONNX Runtime's post-training static quantization of ``model.onnx``,
calibrated on the user's inputs, and the gate that holds it to the float32 net.

The float32 model is pre-processed first (shape inference, ONNX Runtime's graph optimisations), as
ONNX Runtime recommends. QDQ format, per-output-channel symmetric int8 weights, asymmetric uint8
activations (U8S8: what x86 CPUs with AVX512-VNNI or AMX run natively), MinMax calibration.
The gate runs the quantized model in ONNX Runtime on the held-out inputs
(:func:`.calibration.split_calibration`) and compares its top-1 classes with the float32 deploy
net's: below the user's minimum agreement the conversion is refused, with the quantization report
naming the layers to blame.

Mixed precision (``serving.int8_float_layers``): the layers with the largest INT8 error alone in the
quantization report stay float32 (:func:`float_nodes`: the layer's Conv and the nodes after it up to
the next Conv, its ReLU and, for the last layer, the classifier head that reads its output). A given
number of them, ``"auto"``: the fewest, one more at a time, that pass the gate, or layers named.
Every quantized model tried is in the report (:class:`Int8Trial`), full INT8 first.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel
from torch import Tensor

from ..deploy.net import PlainNet
from ..deploy.runtimes import ONNX_INPUT, onnx_runner, require
from ..deploy.serving import MAX_INT8_FLOAT_LAYERS
from ..errors import ConversionError, SpecError
from .report import QuantizationReport

BATCH = 8  # calibration inputs per ONNX Runtime run
METHOD = "onnxruntime quantize_static: QDQ, per-channel symmetric int8 weights, uint8 activations, MinMax"


FloatLayers = int | Literal["auto"] | list[str]  # serving.int8_float_layers


class Int8Trial(BaseModel):
    """One quantized model tried: ``float_layers`` kept float32, the rest INT8, on the held-out inputs."""

    float_layers: list[str]  # worst first (the quantization report's INT8 error alone), or as named
    top1_agreement: float
    logits_rel_error: float
    passed: bool


class Int8Report(BaseModel):
    """``model.int8.onnx`` in ONNX Runtime against the float32 deploy net on held-out inputs."""

    runtime: str = "onnxruntime"
    method: str = METHOD
    calibration_samples: int
    held_out_samples: int
    top1_agreement: float  # fraction of held-out inputs with the float32 net's top-1 class
    min_agreement: float
    logits_rel_error: float  # ||int8 - fp32|| / ||fp32|| over the held-out logits
    passed: bool
    quantize_seconds: float  # every trial's quantization together
    float_layers_option: FloatLayers = 0  # serving.int8_float_layers
    float_layers: list[str] = []  # kept float32 in model.int8.onnx (none: every layer INT8)
    trials: list[Int8Trial] = []  # every model tried, full INT8 first; the last is model.int8.onnx


def quantize_onnx(onnx: bytes, calibration: Tensor, float_layers: list[str] | None = None) -> bytes:
    """``onnx`` (the float32 deploy net) statically quantized to INT8, calibrated on ``calibration``;
    the fused layers named in ``float_layers`` (``stem``, ``stages.S.I``) stay float32."""
    require("onnxruntime", "INT8 quantization (serving.precision int8)")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        """``calibration``, ``BATCH`` inputs at a time."""

        def __init__(self) -> None:
            self.batches = iter(calibration.split(BATCH))

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {ONNX_INPUT: batch.contiguous().numpy()}

    with tempfile.TemporaryDirectory(prefix="reparam-int8-") as scratch:
        source, target = Path(scratch) / "model.onnx", Path(scratch) / "model.int8.onnx"
        prepared = Path(scratch) / "model.prepared.onnx"
        source.write_bytes(onnx)
        try:
            quant_pre_process(source, prepared)  # shape inference and graph optimisation first
            excluded = float_nodes(prepared.read_bytes(), float_layers or [])
            quantize_static(
                prepared,
                target,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
            )
        except ConversionError:
            raise
        except Exception as exc:
            problem = (str(exc).strip().splitlines() or [""])[0]
            raise ConversionError(f"INT8 quantization failed: {type(exc).__name__}: {problem}") from exc
        return target.read_bytes()


def float_nodes(onnx: bytes, layers: list[str]) -> list[str]:
    """The ONNX nodes that keep each fused layer of ``layers`` in float32: the Conv that reads the
    layer's weight (``<layer>.conv.weight``) and every node after it up to the next Conv (its ReLU;
    after the last layer, the pooling and the classifier that would quantize its output again)."""
    import onnx as onnx_lib

    graph = onnx_lib.load_model_from_string(onnx).graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = {node.input[1]: node for node in graph.node if node.op_type == "Conv" and len(node.input) > 1}
    excluded: list[str] = []
    for layer in layers:
        conv = convs.get(f"{layer}.conv.weight")
        if conv is None:
            raise ConversionError(f"INT8 quantization: no Conv node of layer {layer} in model.onnx")
        pending, seen = [conv], set()
        while pending:
            node = pending.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            excluded.append(node.name)
            pending += [n for out in node.output for n in consumers.get(out, []) if n.op_type != "Conv"]
    return list(dict.fromkeys(excluded))


def ranked_layers(report: QuantizationReport) -> list[str]:
    """Every fused layer, largest INT8 logits error alone first (``worst_layers`` is its head)."""
    ordered = sorted(report.layers, key=lambda layer: layer.int8.logits_rel_error, reverse=True)
    return [layer.name for layer in ordered]


def check_float_layers(option: FloatLayers, layers: list[str]) -> None:
    """``SpecError`` when ``option`` names a layer the net (its fused ``layers``) does not have, or
    would keep every layer float32."""
    if isinstance(option, list):
        unknown = [name for name in option if name not in layers]
        if unknown:
            raise SpecError(
                f"serving.int8_float_layers: this net has no layer {', '.join(unknown)}; its fused "
                f"layers: {', '.join(layers)}"
            )
    count = len(option) if isinstance(option, list) else option
    if count != "auto" and count >= len(layers):
        raise SpecError(
            f"serving.int8_float_layers {option}: this net has {len(layers)} fused layers, so at most "
            f"{len(layers) - 1} can stay float32 (INT8 needs one)"
        )


def quantize_gated(
    onnx: bytes,
    net: PlainNet,
    report: QuantizationReport,
    fit: Tensor,
    held_out: Tensor,
    min_agreement: float,
    float_layers: FloatLayers = 0,
) -> tuple[bytes, Int8Report]:
    """``model.int8.onnx`` calibrated on ``fit`` and its report against ``net`` on ``held_out``.

    Full INT8 first; ``float_layers`` N > 0 then keeps the N worst layers of ``report`` float32, a
    list of names those layers (both measured, the second kept); ``"auto"`` adds the worst layers
    one at a time until the gate passes or ``MAX_INT8_FLOAT_LAYERS`` (or all layers but one) are
    float, and keeps the last one tried."""
    ranking = ranked_layers(report)
    check_float_layers(float_layers, [layer.name for layer in report.layers])
    if float_layers == "auto":
        tried = [ranking[:k] for k in range(min(MAX_INT8_FLOAT_LAYERS, len(ranking) - 1) + 1)]
    elif isinstance(float_layers, list):
        tried = [[], float_layers]
    else:
        tried = [[]] if float_layers == 0 else [[], ranking[:float_layers]]
    reference = _float32_logits(net, held_out)
    trials: list[Int8Trial] = []
    seconds = 0.0
    int8 = b""
    for layers in tried:
        started = time.perf_counter()
        int8 = quantize_onnx(onnx, fit, layers)
        seconds += time.perf_counter() - started
        trials.append(_trial(int8, layers, reference, held_out, min_agreement))
        if float_layers == "auto" and trials[-1].passed:
            break
    chosen = trials[-1]
    return int8, Int8Report(
        calibration_samples=int(fit.shape[0]),
        held_out_samples=int(held_out.shape[0]),
        top1_agreement=chosen.top1_agreement,
        min_agreement=min_agreement,
        logits_rel_error=chosen.logits_rel_error,
        passed=chosen.passed,
        quantize_seconds=round(seconds, 6),
        float_layers_option=float_layers,
        float_layers=chosen.float_layers,
        trials=trials,
    )


def _float32_logits(net: PlainNet, held_out: Tensor) -> Tensor:
    fp32 = copy.deepcopy(net).float().eval()
    with torch.inference_mode():
        return torch.cat([fp32(x) for x in held_out.split(BATCH)]).double()


def _trial(
    int8: bytes, float_layers: list[str], reference: Tensor, held_out: Tensor, min_agreement: float
) -> Int8Trial:
    run = onnx_runner("onnxruntime", int8, "int8")
    quantized = torch.cat([run(x.contiguous()) for x in held_out.split(BATCH)]).double()
    agreement = float((reference.argmax(1) == quantized.argmax(1)).double().mean())
    norm = float(torch.linalg.vector_norm(reference)) or 1.0
    error = float(torch.linalg.vector_norm(quantized - reference)) / norm
    return Int8Trial(
        float_layers=float_layers,
        top1_agreement=agreement,
        logits_rel_error=error,
        passed=math.isfinite(error) and agreement >= min_agreement,
    )
