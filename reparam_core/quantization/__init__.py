"""Quantization: the per-layer INT8 diagnosis of a deploy net (:mod:`.report`), calibration inputs
(:mod:`.calibration`) and ONNX Runtime's static INT8 model with its agreement gate (:mod:`.int8`)."""

from .calibration import MAX_CALIBRATION_SAMPLES, check_calibration, read_calibration, split_calibration
from .int8 import (
    Int8Report,
    Int8Trial,
    check_float_layers,
    float_nodes,
    quantize_gated,
    quantize_onnx,
)
from .report import Int8Error, LayerQuantization, QuantizationReport, fused_layers, quantization_report

__all__ = [
    "MAX_CALIBRATION_SAMPLES",
    "Int8Error",
    "Int8Report",
    "Int8Trial",
    "LayerQuantization",
    "QuantizationReport",
    "check_calibration",
    "check_float_layers",
    "float_nodes",
    "fused_layers",
    "quantization_report",
    "quantize_gated",
    "quantize_onnx",
    "read_calibration",
    "split_calibration",
]
