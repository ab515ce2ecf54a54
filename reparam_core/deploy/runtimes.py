"""The ONNX deploy net and the runtimes that serve it besides PyTorch: ONNX Runtime and OpenVINO.

:func:`export_onnx` turns the float32 deploy net into ``model.onnx`` (opset from the exporter;
batch, height and width dynamic). :func:`onnx_runner` loads it into ONNX Runtime's CPU execution
provider or OpenVINO's CPU plugin and returns a function from a float32 ``[N, C, H, W]`` batch to
float32 logits. Both packages (and ``onnx``/``onnxscript`` for the export) come with the ``service`` extra;
without them these runtimes are refused with the install line, never half-served.
"""

from __future__ import annotations

import copy
import importlib
import io
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..equivalence import random_input
from ..errors import ConversionError, SpecError
from .tracing import TRACING

Runtime = Literal["torch", "onnxruntime", "openvino"]
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"
Runner = Callable[[Tensor], Tensor]
# OpenVINO's name for each serving precision (fp32 must be asked for explicitly: on a CPU with
# native bf16 the plugin would otherwise run in bf16 by default).
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def require(package: str, purpose: str) -> ModuleType:
    """Import an optional package, or refuse (``SpecError``) saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise SpecError(
            f"{purpose} needs the {package} package, which is not installed: pip install 'reparam[service]'"
        ) from None


def export_onnx(model: nn.Module, sample_shape: tuple[int, int, int]) -> bytes:
    """``model.onnx`` of a float32 deploy net, its batch (1 to 4096), height and width (8, or the
    spec's size when smaller, to 4096) dynamic: it serves every input the PyTorch net serves."""
    require("onnxscript", "the ONNX export (model.onnx)")
    float32 = all(p.dtype == torch.float32 for p in model.parameters())
    net = (model if float32 else copy.deepcopy(model).float()).eval()
    # Batch 2 in the example: torch.export specialises a size-1 dimension, even one marked dynamic.
    example = random_input((2, *sample_shape)).float()
    _, height, width = sample_shape
    dynamic = {
        0: torch.export.Dim("batch", min=1, max=4096),
        2: torch.export.Dim("height", min=min(8, height), max=4096),
        3: torch.export.Dim("width", min=min(8, width), max=4096),
    }
    try:
        with TRACING, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net,
                (example,),
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_shapes=(dynamic,),
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:
        problem = (str(exc).strip().splitlines() or [""])[0]
        message = f"ONNX export of the deploy net failed: {type(exc).__name__}: {problem}"
        raise ConversionError(message) from exc
    if program is None:
        raise ConversionError("ONNX export of the deploy net produced no program")
    buffer = io.BytesIO()
    program.save(buffer)  # type: ignore[arg-type]
    return buffer.getvalue()


def onnx_runner(runtime: Runtime, onnx: bytes | Path, precision: str) -> Runner:
    """A float32 batch -> float32 logits function running ``onnx`` in ``runtime`` on the CPU, with
    as many threads as PyTorch uses in this process (``OMP_NUM_THREADS`` in a TorchServe worker).
    ``precision`` int8: ``onnx`` is the quantized ``model.int8.onnx`` (ONNX Runtime only)."""
    source = onnx.read_bytes() if isinstance(onnx, Path) else onnx
    if runtime == "onnxruntime":
        return _onnxruntime(source)
    if runtime == "openvino" and precision in OPENVINO_PRECISION:
        return _openvino(source, OPENVINO_PRECISION[precision])
    raise ValueError(f"runtime {runtime} does not serve precision {precision}")


def runtime_versions() -> dict[Runtime, str | None]:
    """The version of each serving runtime installed here (None: not installed)."""
    versions: dict[Runtime, str | None] = {"torch": torch.__version__}
    onnx_runtimes: tuple[Runtime, ...] = ("onnxruntime", "openvino")
    for name in onnx_runtimes:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            versions[name] = None
    return versions


def _onnxruntime(model: bytes) -> Runner:
    ort: Any = require("onnxruntime", "serving.runtime 'onnxruntime'")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    # Idle pool threads sleep rather than spin: the cores go back to the event loop and other workers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:  # InferenceSession.run is thread-safe
        (logits,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})
        return torch.from_numpy(logits)

    return run


def _openvino(model: bytes, precision: str) -> Runner:
    ov: Any = require("openvino", "serving.runtime 'openvino'")
    core = ov.Core()
    network = core.read_model(model=model)
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "ENABLE_CPU_PINNING": False,  # several single-threaded workers must not pin to the same core
    }
    compiled = core.compile_model(network, "CPU", config)
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: calls never interleave

    def run(x: Tensor) -> Tensor:
        with lock:
            result = request.infer({0: x.numpy()}, share_inputs=True)
            return torch.from_numpy(result[0].copy())

    return run
