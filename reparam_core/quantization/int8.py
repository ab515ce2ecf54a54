"""INT8 ``model.int8.onnx``: ONNX Runtime's post-training static quantization of ``model.onnx``,
calibrated on the user's inputs, and the gate that holds it to the float32 net.

The float32 model is pre-processed first (shape inference, ONNX Runtime's graph optimisations), as
ONNX Runtime recommends. QDQ format, per-output-channel symmetric int8 weights, asymmetric uint8
activations (U8S8: what x86 CPUs with AVX512-VNNI or AMX run natively), MinMax calibration.
The gate runs the quantized model in ONNX Runtime on the held-out inputs
(:func:`.calibration.split_calibration`) and compares its top-1 classes with the float32 deploy
net's: below the user's minimum agreement the conversion is refused, with the quantization report
naming the layers to blame.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor

from ..deploy.net import PlainNet
from ..deploy.runtimes import ONNX_INPUT, onnx_runner, require
from ..errors import ConversionError

BATCH = 8  # calibration inputs per ONNX Runtime run
METHOD = "onnxruntime quantize_static: QDQ, per-channel symmetric int8 weights, uint8 activations, MinMax"


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
    quantize_seconds: float


def quantize_onnx(onnx: bytes, calibration: Tensor) -> bytes:
    """``onnx`` (the float32 deploy net) statically quantized to INT8, calibrated on ``calibration``."""
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
            quantize_static(
                prepared,
                target,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as exc:
            problem = (str(exc).strip().splitlines() or [""])[0]
            raise ConversionError(f"INT8 quantization failed: {type(exc).__name__}: {problem}") from exc
        return target.read_bytes()


def check_int8(
    int8: bytes, net: PlainNet, calibrated_on: int, held_out: Tensor, min_agreement: float, seconds: float
) -> Int8Report:
    """``int8`` in ONNX Runtime against ``net`` in float32 on ``held_out``."""
    run = onnx_runner("onnxruntime", int8, "int8")
    fp32 = copy.deepcopy(net).float().eval()
    with torch.inference_mode():
        reference = torch.cat([fp32(x) for x in held_out.split(BATCH)]).double()
    quantized = torch.cat([run(x.contiguous()) for x in held_out.split(BATCH)]).double()
    agreement = float((reference.argmax(1) == quantized.argmax(1)).double().mean())
    norm = float(torch.linalg.vector_norm(reference)) or 1.0
    error = float(torch.linalg.vector_norm(quantized - reference)) / norm
    return Int8Report(
        calibration_samples=calibrated_on,
        held_out_samples=int(held_out.shape[0]),
        top1_agreement=agreement,
        min_agreement=min_agreement,
        logits_rel_error=error,
        passed=math.isfinite(error) and agreement >= min_agreement,
        quantize_seconds=round(seconds, 6),
    )
