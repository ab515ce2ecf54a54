"""Will a fused net quantize? A per-layer diagnosis on the user's calibration inputs, before deploying.

Fusing a re-parameterized block adds its branches' kernels (and folds their BNs) into one conv: a
few weights (the identity's and 1x1's centre taps, scaled by their BNs) can dwarf the rest, and the
summed branches widen the activation ranges. Post-training INT8 then fails on those layers, not
uniformly. :func:`quantization_report` measures, per fused conv layer of a :class:`PlainNet`:

- its weights: min/max per output channel, the outlier ratio ``max |w| / 99.9th percentile |w|``
  and the channel spread ``max / median`` of the channels' ``max |w|``;
- its activations on the calibration inputs: min, max and the 99.99th percentile of ``|x|`` at
  the layer's input and output;
- the INT8 error when that layer *alone* is quantized, simulated in float32 PyTorch the way ONNX
  Runtime's static QDQ quantization does it: per-output-channel symmetric int8 weights, per-tensor
  asymmetric 8-bit activations (the layer's input and output, the range their min/max over the
  calibration inputs, zero included): the relative L2 error of the final logits against the
  float32 net, and the fraction of inputs whose top-1 class is unchanged.

The layers with the largest logit errors are named (``worst_layers``); every layer quantized at
once is simulated too (``all_layers``). Percentiles are estimated on a fixed random sample of at
most ``SAMPLE_PER_CHUNK`` values per layer and chunk of inputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ..deploy.net import FusedConv, PlainNet
from ..errors import SpecError

WORST = 3  # layers named in ``worst_layers``
CHUNK = 16  # calibration inputs through the net at a time (bounded memory)
SAMPLE_PER_CHUNK = 1 << 16  # activation values kept per layer and chunk for the percentile
WEIGHT_QMAX = 127  # symmetric int8 weights: [-127, 127]
ACTIVATION_LEVELS = 255  # 8-bit activations: 256 levels
METHOD = (
    "one layer at a time: per-output-channel symmetric int8 weights, per-tensor asymmetric 8-bit "
    "activations (input and output, min/max over the calibration inputs); float32 elsewhere"
)


class Int8Error(BaseModel):
    """The simulated int8 net against the float32 net on the calibration inputs."""

    logits_rel_error: float  # ||int8 - fp32|| / ||fp32||, over all logits
    top1_agreement: float  # fraction of inputs with the same top-1 class


class LayerQuantization(BaseModel):
    """One fused conv layer: weights, activation ranges, and its int8 error alone."""

    name: str  # stem, stages.S.I
    weight_shape: list[int]
    weight_min: list[float]  # per output channel
    weight_max: list[float]
    weight_absmax: float
    weight_p999: float  # 99.9th percentile of |w|
    outlier_ratio: float  # weight_absmax / weight_p999
    channel_spread: float  # max / median of the channels' max |w|
    input_min: float
    input_max: float
    input_p9999: float  # 99.99th percentile of |x|
    output_min: float
    output_max: float
    output_p9999: float
    int8: Int8Error  # this layer alone quantized


class QuantizationReport(BaseModel):
    """Per-layer quantization diagnosis of a deploy net on calibration inputs."""

    samples: int
    input_shape: list[int]  # [C, H, W] of the calibration inputs
    method: str = METHOD
    layers: list[LayerQuantization]
    worst_layers: list[str]  # largest int8 logit error alone, worst first
    all_layers: Int8Error  # every layer quantized at once (simulated)

    def layer(self, name: str) -> LayerQuantization:
        return next(layer for layer in self.layers if layer.name == name)


@dataclass
class _Range:
    """Running min/max of a tensor over the calibration inputs, and a sample of ``|x|``."""

    low: float = math.inf
    high: float = -math.inf

    def __post_init__(self) -> None:
        self.samples: list[Tensor] = []

    def update(self, x: Tensor, generator: torch.Generator) -> None:
        flat = x.detach().reshape(-1).float()
        self.low, self.high = min(self.low, float(flat.min())), max(self.high, float(flat.max()))
        if flat.numel() > SAMPLE_PER_CHUNK:
            flat = flat[torch.randint(flat.numel(), (SAMPLE_PER_CHUNK,), generator=generator)]
        self.samples.append(flat.abs())

    def percentile(self, q: float) -> float:
        return float(torch.quantile(torch.cat(self.samples), q))

    def fake_quant(self, x: Tensor) -> Tensor:
        """Asymmetric 8-bit quantize-dequantize over this range (zero included, as ONNX Runtime does)."""
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = (high - low) / ACTIVATION_LEVELS or 1.0
        zero = round(-low / scale)
        return (torch.clamp(torch.round(x / scale) + zero, 0, ACTIVATION_LEVELS) - zero) * scale


def fake_quant_weight(weight: Tensor) -> Tensor:
    """Per-output-channel symmetric int8 quantize-dequantize."""
    absmax = weight.abs().reshape(weight.shape[0], -1).amax(dim=1).clamp_min(1e-30)
    scale = (absmax / WEIGHT_QMAX).reshape(-1, *([1] * (weight.ndim - 1)))
    return torch.clamp(torch.round(weight / scale), -WEIGHT_QMAX, WEIGHT_QMAX) * scale


def quantization_report(net: PlainNet, calibration: Tensor, chunk: int = CHUNK) -> QuantizationReport:
    """The per-layer diagnosis of ``net`` (left unmodified) on ``calibration`` ``[N, C, H, W]``
    (already preprocessed, as the net takes them)."""
    if calibration.ndim != 4 or calibration.shape[0] < 1 or calibration.shape[1] != net.spec.in_channels:
        raise SpecError(
            f"calibration inputs {list(calibration.shape)} should be "
            f"[N, {net.spec.in_channels}, H, W], N >= 1"
        )
    model = copy.deepcopy(net).float().eval().cpu()
    layers = fused_layers(model)
    chunks = calibration.detach().float().cpu().split(chunk)
    generator = torch.Generator().manual_seed(0)
    inputs = {name: _Range() for name, _ in layers}
    outputs = {name: _Range() for name, _ in layers}
    with torch.inference_mode():
        for x in chunks:
            for (name, _), (seen, out) in zip(layers, _trace(model, layers, x), strict=True):
                inputs[name].update(seen, generator)
                outputs[name].update(out, generator)
        alone: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name, _ in layers}
        together: list[tuple[Tensor, Tensor]] = []
        for x in chunks:
            seen_inputs = [seen for seen, _ in _trace(model, layers, x)]
            reference = model(x)
            for k, (name, layer) in enumerate(layers):
                with _quantized(layer, inputs[name], outputs[name]):
                    alone[name].append((reference, _suffix(model, layers, k, seen_inputs[k])))
            with _all_quantized(layers, inputs, outputs):
                together.append((reference, model(x)))
    reports = [
        _layer_report(name, layer, inputs[name], outputs[name], _error(alone[name])) for name, layer in layers
    ]
    worst = sorted(reports, key=lambda r: r.int8.logits_rel_error, reverse=True)[:WORST]
    return QuantizationReport(
        samples=int(calibration.shape[0]),
        input_shape=list(calibration.shape[1:]),
        layers=reports,
        worst_layers=[r.name for r in worst],
        all_layers=_error(together),
    )


def fused_layers(model: PlainNet) -> list[tuple[str, FusedConv]]:
    """The net's fused conv layers in order: ``stem``, ``stages.S.I``."""
    named: list[tuple[str, nn.Module]] = [("stem", model.stem)]
    for s, stage in enumerate(model.stages):
        named += [(f"stages.{s}.{i}", block) for i, block in enumerate(cast(nn.Sequential, stage))]
    return [(name, cast(FusedConv, module)) for name, module in named]


def _trace(model: PlainNet, layers: list[tuple[str, FusedConv]], x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Each layer's input and output on ``x`` (the net is stem -> stages, in this order)."""
    seen = []
    for _, layer in layers:
        out = layer(x)
        seen.append((x, out))
        x = out
    return seen


def _suffix(model: PlainNet, layers: list[tuple[str, FusedConv]], k: int, x: Tensor) -> Tensor:
    """The net's logits from layer ``k``'s input on."""
    for _, layer in layers[k:]:
        x = layer(x)
    return model.head(x) if model.head is not None else x


@contextmanager
def _quantized(layer: FusedConv, seen: _Range, out: _Range) -> Iterator[None]:
    """``layer`` with int8 weights and 8-bit input and output while the context lasts."""
    weight = layer.conv.weight.data
    layer.conv.weight.data = fake_quant_weight(weight)
    pre = layer.register_forward_pre_hook(lambda _, args: (seen.fake_quant(args[0]),))
    post = layer.register_forward_hook(lambda _, __, result: out.fake_quant(result))
    try:
        yield
    finally:
        layer.conv.weight.data = weight
        pre.remove()
        post.remove()


@contextmanager
def _all_quantized(
    layers: list[tuple[str, FusedConv]], inputs: dict[str, _Range], outputs: dict[str, _Range]
) -> Iterator[None]:
    """Every layer quantized at once."""
    if not layers:
        yield
        return
    (name, layer), rest = layers[0], layers[1:]
    with _quantized(layer, inputs[name], outputs[name]), _all_quantized(rest, inputs, outputs):
        yield


def _error(pairs: list[tuple[Tensor, Tensor]]) -> Int8Error:
    reference = torch.cat([r for r, _ in pairs]).double()
    quantized = torch.cat([q for _, q in pairs]).double()
    norm = float(torch.linalg.vector_norm(reference)) or 1.0
    error = float(torch.linalg.vector_norm(quantized - reference)) / norm
    if reference.ndim == 2:
        agreement = float((reference.argmax(1) == quantized.argmax(1)).double().mean())
    else:  # a net without a head: no classes to agree on
        agreement = math.nan
    return Int8Error(logits_rel_error=error, top1_agreement=agreement)


def _layer_report(
    name: str, layer: FusedConv, seen: _Range, out: _Range, error: Int8Error
) -> LayerQuantization:
    weight = layer.conv.weight.detach().float()
    per_channel = weight.reshape(weight.shape[0], -1)
    magnitudes = per_channel.abs().reshape(-1)
    absmax = float(magnitudes.max())
    p999 = float(torch.quantile(_sampled(magnitudes), 0.999))
    channel_max = per_channel.abs().amax(dim=1)
    median = float(channel_max.median())
    return LayerQuantization(
        name=name,
        weight_shape=list(weight.shape),
        weight_min=[round(float(v), 7) for v in per_channel.amin(dim=1)],
        weight_max=[round(float(v), 7) for v in per_channel.amax(dim=1)],
        weight_absmax=absmax,
        weight_p999=p999,
        outlier_ratio=absmax / p999 if p999 > 0 else math.inf,
        channel_spread=float(channel_max.max()) / median if median > 0 else math.inf,
        input_min=seen.low,
        input_max=seen.high,
        input_p9999=seen.percentile(0.9999),
        output_min=out.low,
        output_max=out.high,
        output_p9999=out.percentile(0.9999),
        int8=error,
    )


def _sampled(values: Tensor) -> Tensor:
    """``torch.quantile`` takes at most 2**24 values: a fixed sample of larger tensors."""
    limit = 1 << 24
    if values.numel() <= limit:
        return values
    generator = torch.Generator().manual_seed(0)
    return values[torch.randint(values.numel(), (limit,), generator=generator)]
