"""How a deploy net is run when served: runtime, precision, memory format, grad mode, compilation,
warm-up.

Chosen per model version when it is registered (:class:`ServingOptions`) and applied the same way
by every backend through :class:`ServingModel`. A version is only marked ready after its warm-up,
so the first request never pays for cuDNN autotuning or ``torch.compile``. Served nets take
either preprocessed float batches ``[N, C, H, W]`` or raw ``uint8`` pixels ``[N, H, W, C]``, which
they normalise themselves (:class:`PixelNormaliser`): a quarter of the bytes on the wire, and the
arithmetic done where the model runs.

``runtime``: PyTorch runs the deploy net itself (on the conversion's device); ONNX Runtime and
OpenVINO run ``model.onnx`` on the CPU (:mod:`.runtimes`). Combinations that a runtime or this CPU
cannot serve sensibly are refused (``SpecError``) with the valid ones named.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import Tensor, nn

from ..equivalence import random_input, set_tf32
from ..errors import ConversionError, ReparamError, SpecError, describe_validation_error
from .artifacts import ONNX, ONNX_INT8, load_artifacts, read_spec
from .cpu import cpu_capabilities
from .preprocess import PixelNormaliser
from .runtimes import Runtime, onnx_runner
from .spec import DeploySpec
from .tracing import TRACING

Precision = Literal["fp32", "fp16", "bf16", "int8"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
MAX_INT8_FLOAT_LAYERS = 8  # int8_float_layers: at most this many fused layers kept float32 ("auto" too)
# a fused layer, as the quantization report names it
LAYER_NAME = re.compile(r"stem|stages\.\d{1,3}\.\d{1,4}")
SERVING_FILE = "serving.json"  # the options, next to the weights, where a server reads them
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What each runtime serves. ONNX Runtime's CPU execution provider has no bf16 convolution kernels
# and fp16 ones only on some CPUs (elsewhere it casts around each op); OpenVINO's CPU plugin computes
# fp16 only on CPUs with AVX512-FP16 (or ARM), bf16 natively with AVX512-BF16 or AMX. int8:
# ONNX Runtime runs ``model.int8.onnx`` (static QDQ, :mod:`reparam_core.quantization.int8`).
PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "fp16", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16"),
}


def valid_combinations() -> str:
    return "; ".join(f"{runtime}: {'|'.join(precisions)}" for runtime, precisions in PRECISIONS.items())


class ServingOptions(BaseModel):
    """Per-version serving fast paths.

    ``runtime``: ``torch`` (the deploy net in PyTorch), ``onnxruntime`` or ``openvino`` (``model.onnx``
    on the CPU). ``precision``: weights and activations in float32, float16 or bfloat16 (torch: all
    three; onnxruntime: fp32, int8; openvino: fp32, bf16 through its inference precision hint). bf16
    on the CPU needs native bf16 (``avx512_bf16`` or AMX) and is refused elsewhere. int8 serves
    ``model.int8.onnx``, quantized at conversion on calibration inputs and refused there when its
    top-1 agreement with the float32 net on held-out inputs is below ``int8_min_agreement``;
    ``int8_float_layers`` N keeps the N layers with the largest INT8 error alone (the quantization
    report's ranking) in float32, ``"auto"`` the fewest that pass the agreement gate (at most
    ``MAX_INT8_FLOAT_LAYERS``), a list of layer names those layers
    (:func:`reparam_core.quantization.quantize_gated`). The
    options below apply to runtime torch: ``channels_last``: NHWC memory format (faster on CPU
    oneDNN and on tensor cores). ``inference_mode``: ``torch.inference_mode`` rather than
    ``torch.no_grad``. ``compile``: ``torch.compile`` with ``compile_mode`` (needs a C++ compiler on
    CPU; the time it takes is
    reported). ``warmup_iterations``: forward passes per warm-up batch size before the version is
    marked ready.
    """

    model_config = ConfigDict(extra="forbid")

    runtime: Runtime = "torch"
    precision: Precision = "fp32"
    channels_last: bool = True
    inference_mode: bool = True
    compile: bool = False
    compile_mode: CompileMode = "default"
    warmup_iterations: int = Field(default=2, ge=0, le=100)
    int8_min_agreement: float = Field(default=0.99, ge=0, le=1)
    int8_float_layers: int | Literal["auto"] | list[str] = 0

    @field_validator("int8_float_layers", mode="before")
    @classmethod
    def _float_layers_bounded(cls, value: Any) -> Any:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value == "auto" or (whole and 0 <= value <= MAX_INT8_FLOAT_LAYERS):
            return value
        if isinstance(value, list) and 1 <= len(value) <= MAX_INT8_FLOAT_LAYERS:
            names = [v for v in value if isinstance(v, str) and LAYER_NAME.fullmatch(v)]
            if len(names) == len(value) and len(set(names)) == len(names):
                return value
        raise ValueError(
            f"an integer 0-{MAX_INT8_FLOAT_LAYERS} (that many of the layers with the largest INT8 error "
            f'kept float32), "auto", or a list of 1-{MAX_INT8_FLOAT_LAYERS} distinct layer names (stem, '
            f"stages.S.I), not {repr(value)[:200]}"
        )

    @model_validator(mode="after")
    def _runtime_serves_it(self) -> ServingOptions:
        if self.precision not in PRECISIONS[self.runtime]:
            raise ValueError(
                f"runtime {self.runtime} does not serve precision {self.precision}; "
                f"valid combinations: {valid_combinations()}"
            )
        if self.int8_float_layers != 0 and self.precision != "int8":
            raise ValueError(
                f"int8_float_layers {self.int8_float_layers!r} keeps layers of model.int8.onnx in float32: "
                f"it needs precision int8 (runtime onnxruntime), not {self.precision}"
            )
        if self.compile and self.runtime != "torch":
            raise ValueError(f"compile is torch.compile: runtime {self.runtime} has no compile option")
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The dtype a PyTorch net is served in; int8 models take float32 input."""
        return DTYPES.get(self.precision, torch.float32)

    @property
    def onnx_file(self) -> str:
        """The ONNX file an ONNX runtime serves: ``model.int8.onnx`` for int8, else ``model.onnx``."""
        return ONNX_INT8 if self.precision == "int8" else ONNX

    @property
    def onnx(self) -> bool:
        """Whether this runtime serves ``model.onnx`` (on the CPU) rather than the PyTorch net."""
        return self.runtime != "torch"

    def serving_device(self, device: torch.device | str) -> torch.device:
        """Where a net served this way runs: ``device`` for torch, the CPU for the ONNX runtimes."""
        return torch.device("cpu") if self.onnx else torch.device(device)


def parse_serving(value: ServingOptions | dict[str, Any] | str | None) -> ServingOptions:
    """Serving options from JSON text, a dict, or None (the defaults); ``SpecError`` names bad fields."""
    if isinstance(value, ServingOptions):
        return value
    try:
        if value is None or (isinstance(value, str) and not value.strip()):
            return ServingOptions()
        if isinstance(value, str):
            return ServingOptions.model_validate_json(value)
        return ServingOptions.model_validate(value)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, "serving")) from None


class ServingModel:
    """A deploy net prepared for serving: a PyTorch net for runtime torch (``model`` is moved and
    cast in place: pass a net this object may own), else ``model.onnx`` (bytes or its path) loaded
    into that runtime on the CPU. ``logits(batch)`` runs it in the serving precision;
    ``probabilities(batch)`` returns float32 softmax rows on the CPU. Safe to call from several
    threads (a compiled net is called under a lock, so guards and recompiles never interleave)."""

    def __init__(
        self,
        model: nn.Module | bytes | Path,
        options: ServingOptions,
        device: torch.device | str,
        normaliser: PixelNormaliser | None = None,
    ) -> None:
        self.options = options
        self.device = options.serving_device(device)
        self.normaliser = normaliser
        require_native_bf16(options, self.device)
        self.eager: nn.Module | None = None
        self.module: Any
        if options.onnx:
            if isinstance(model, nn.Module):
                raise TypeError(f"runtime {options.runtime} serves model.onnx, not a PyTorch module")
            self.memory_format, self.input_dtype = torch.contiguous_format, torch.float32
            self.module = onnx_runner(options.runtime, model, options.precision)
        else:
            if not isinstance(model, nn.Module):
                raise TypeError("runtime torch serves a PyTorch module")
            self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
            self.input_dtype = options.dtype
            prepared = model.eval().to(device=self.device, dtype=options.dtype)
            if options.channels_last:
                prepared = prepared.to(memory_format=torch.channels_last)
            self.eager = prepared
            if options.compile and self.device.type == "cpu":
                _require_cpp_compiler()
            self.module = (
                torch.compile(prepared, mode=options.compile_mode, dynamic=None)
                if options.compile
                else prepared
            )
        self._lock = threading.Lock() if options.compile else contextlib.nullcontext()
        self.compile_seconds: float | None = None
        self.warmup_seconds = 0.0

    def _mode(self) -> contextlib.AbstractContextManager[Any]:
        return torch.inference_mode() if self.options.inference_mode else torch.no_grad()

    def model_input(self, batch: Tensor) -> Tensor:
        """A float batch, or uint8 pixels normalised, on the device in the serving dtype and layout."""
        with self._mode():
            if batch.dtype == torch.uint8:
                if self.normaliser is None:
                    raise ValueError("this served net was prepared without pixel normalisation")
                batch = self.normaliser(batch)
            x = batch.to(device=self.device, dtype=self.input_dtype, non_blocking=True)
            return x.contiguous(memory_format=self.memory_format)

    def logits(self, batch: Tensor) -> Tensor:
        return self._forward(self.model_input(batch))

    def probabilities(self, batch: Tensor) -> Tensor:
        return self._softmax(self.logits(batch))

    def answer_each(self, batches: list[Tensor]) -> list[Tensor]:
        """Probabilities for several requests' batches: one forward pass over all of them (or one
        per request when their image sizes differ), split back into each request's rows."""
        inputs = [self.model_input(batch) for batch in batches]
        if len({x.shape[1:] for x in inputs}) > 1:
            return [self._softmax(self._forward(x)) for x in inputs]
        together = self._softmax(self._forward(torch.cat(inputs)))
        return list(torch.split(together, [x.shape[0] for x in inputs]))

    def _forward(self, x: Tensor) -> Tensor:
        with self._lock, self._mode():
            return self.module(x)

    def _softmax(self, logits: Tensor) -> Tensor:
        with self._mode():
            return torch.softmax(logits.float(), dim=1).cpu()

    def warm_up(self, sample_shape: tuple[int, int, int], batch_sizes: Iterable[int]) -> None:
        """Run ``warmup_iterations`` passes at each batch size (all of them compile, when compiling,
        holding :data:`~.tracing.TRACING`)."""
        sizes = sorted(set(batch_sizes))
        iterations = max(self.options.warmup_iterations, 1 if self.options.compile else 0)
        start = time.perf_counter()
        first_calls = 0.0
        tracing = TRACING if self.options.compile else contextlib.nullcontext()
        for size in sizes:
            x = random_input((size, *sample_shape)).float()
            for i in range(iterations):
                call = time.perf_counter()
                try:
                    with tracing:
                        self.logits(x)
                except Exception as exc:
                    if not self.options.compile:
                        raise
                    problem = (str(exc).strip().splitlines() or [""])[0]
                    raise ConversionError(
                        f"torch.compile (mode {self.options.compile_mode!r}) failed on {self.device}: "
                        f"{type(exc).__name__}: {problem}"
                    ) from exc
                _synchronize(self.device)
                if i == 0:
                    first_calls += time.perf_counter() - call
        self.warmup_seconds = round(time.perf_counter() - start, 6)
        if self.options.compile:
            self.compile_seconds = round(first_calls, 6)


def prepare_for_serving(
    model: nn.Module | bytes | Path,
    spec: DeploySpec,
    options: ServingOptions,
    device: torch.device | str,
    batch_sizes: Iterable[int] = (1,),
) -> ServingModel:
    """Apply ``options`` to ``model`` (built from ``spec``, or its ``model.onnx`` for the ONNX
    runtimes) on ``device``, with the spec's pixel normalisation, and warm it up at ``batch_sizes``."""
    normaliser = PixelNormaliser(spec.preprocess(), spec.in_channels, options.serving_device(device))
    served = ServingModel(model, options, device, normaliser)
    served.warm_up(spec.sample_shape(), batch_sizes)
    return served


def load_for_serving(
    folder: str | Path, options: ServingOptions, device: torch.device | str, batch_sizes: Iterable[int]
) -> ServingModel:
    """A version's artifact folder served as ``options`` say: the PyTorch net for runtime torch,
    ``model.onnx`` (``model.int8.onnx`` for int8) alone (no PyTorch weights loaded) for the ONNX
    runtimes."""
    root = Path(folder)
    if not options.onnx:
        model, spec = load_artifacts(root, options.serving_device(device))
        return prepare_for_serving(model, spec, options, device, batch_sizes)
    net = root / options.onnx_file
    if not net.is_file():
        raise ReparamError(f"runtime {options.runtime} serves {net.name}, which {root} does not hold")
    return prepare_for_serving(net, read_spec(root), options, device, batch_sizes)


def served_precisions(runtime: Runtime, device: torch.device | str) -> list[str]:
    """The precisions ``runtime`` serves here (bf16 on the CPU only where it is native)."""
    options = ServingOptions(runtime=runtime)
    target = options.serving_device(device)
    native = target.type != "cpu" or cpu_capabilities().bf16
    return [p for p in PRECISIONS[runtime] if p != "bf16" or native]


def require_native_bf16(options: ServingOptions, device: torch.device) -> None:
    """bf16 on a CPU without native bf16 (AVX512-BF16, AMX) is emulated, slower than fp32: refused."""
    if options.precision != "bf16" or device.type != "cpu":
        return
    cpu = cpu_capabilities()
    if not cpu.bf16:
        raise SpecError(
            f"serving.precision bf16 on the CPU needs native bf16 (avx512_bf16 or amx_bf16); this CPU "
            f"({cpu.model}) has {', '.join(cpu.flags()) or 'neither'}: serve fp32 here (or bf16 with "
            f"runtime torch on CUDA)"
        )


def exact_fp32() -> None:
    """Make float32 serving true float32 in this process: cuDNN convs and matmuls use TF32 by
    default on Ampere and newer GPUs, which is not what the conversion checked. Reduced precision
    is asked for explicitly (``precision``: fp16/bf16)."""
    set_tf32(False)


def warmup_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes a backend warms up with: 1 and its largest batch (a compiled net gets a graph
    specialised to 1 and a dynamic-batch graph that serves every other size)."""
    return (1, max_batch) if max_batch > 1 else (1,)


def _require_cpp_compiler() -> None:
    """torch.compile on the CPU builds C++ kernels: refuse early, and clearly, without a compiler."""
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in candidates):
        raise SpecError(
            "serving.compile on the CPU needs a C++ compiler (none of $CXX, g++, c++, clang++ found); "
            "install one or serve without compile"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
