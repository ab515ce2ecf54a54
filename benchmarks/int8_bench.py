"""INT8 serving on this CPU: RepVGG-A0 (or QARepVGG-A0) as ``model.int8.onnx`` in ONNX Runtime
against the float32 deploy net in eager PyTorch and ``model.onnx`` in ONNX Runtime, in one run.

The net (``--family repvgg`` or ``qarepvgg``): our A0 training net, PyTorch's default random init
(seed 0), its BatchNorm statistics calibrated on scikit-image's 12 photographs (a plain average over
them, preprocessed as the service does) and its classifier scaled to a logit spread of about 2 (the
procedure of ``serve_runtimes_bench.calibrated_timm``), converted by ``convert`` with
``serving`` ``{"runtime": "onnxruntime", "precision": "int8"}`` and calibration inputs: 64 crops of
those photographs (random positions and scales, flips), preprocessed as the service does. The
conversion quantizes on 48 of them and measures the top-1 agreement with the float32 net on the
other 16 (the gate is set to 0 here: this script reports the agreement, it does not refuse).
Agreement is also measured on the 12 photographs themselves (centre crops, never calibrated on).

Mixed precision (``serving.int8_float_layers``): for each count K of ``--float-layers`` (default 0 1
2 4 8), ``quantize_gated`` keeps the K layers the quantization report ranks worst in float32 and
measures the model as the gate does (held-out crops: top-1 agreement and logits error); the
photographs' agreement is measured too, and every K model is timed with the others.

Timing: every net served as the service serves it (``load_for_serving`` on the saved artifact
folder, warmed up; the mixed-precision models through the same ``prepare_for_serving``): torch fp32
(eager, channels_last, inference_mode), onnxruntime fp32, onnxruntime int8 and int8 with K layers
float, called with the same float32 NCHW batch, interleaved round by round in one process; medians
of each and the medians of the per-round ratios (time / full-int8 time: > 1 means full int8 is
faster; onnxruntime fp32 time / time: the speedup over float32 in the same runtime). The load
average before and after is recorded.

Usage: python benchmarks/int8_bench.py [--family repvgg|qarepvgg] [--batches 1 8] [--repeats 30]
[--threads N] [--float-layers 0 1 2 4 8] [--named LAYER ...] (one more model with those layers
float32). Writes benchmarks/results/int8_bench_cpu_<family>.json
and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import calibrate_statistics, environment, write_json
from PIL import Image
from serve_runtimes_bench import photographs

from reparam_core import ServingOptions, build_train_model, convert
from reparam_core.deploy import (
    PixelNormaliser,
    ServingModel,
    cpu_capabilities,
    load_for_serving,
    prepare_for_serving,
    runtime_versions,
    warmup_batch_sizes,
)
from reparam_core.quantization import quantize_gated, split_calibration
from service.images import image_to_pixels

CALIBRATION = 64
SERVED = {
    "torch fp32": ServingOptions(),
    "onnxruntime fp32": ServingOptions(runtime="onnxruntime"),
    "onnxruntime int8": ServingOptions(runtime="onnxruntime", precision="int8", int8_min_agreement=0.0),
}


def crops(photos: list[bytes], preprocess: dict[str, Any], count: int) -> torch.Tensor:
    """``count`` random crops (30-100% of the shorter side, flipped half the time) of the photos,
    as the service preprocesses images: float inputs ``[count, 3, 224, 224]``."""
    generator = torch.Generator().manual_seed(0)
    pixels = []
    for i in range(count):
        image = Image.open(io.BytesIO(photos[i % len(photos)])).convert("RGB")
        side = int(min(image.size) * (0.3 + 0.7 * float(torch.rand((), generator=generator))))
        left = int(float(torch.rand((), generator=generator)) * (image.width - side))
        top = int(float(torch.rand((), generator=generator)) * (image.height - side))
        crop = image.crop((left, top, left + side, top + side))
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        pixels.append(image_to_pixels(buffer.getvalue(), preprocess, 3))
    return PixelNormaliser(preprocess, 3)(torch.cat(pixels)).contiguous()


def calibrated(family: str, photos: torch.Tensor) -> torch.nn.Module:
    """Our A0 of ``family``, random weights, BatchNorm statistics of ``photos`` (preprocessed) and
    logits scaled to a spread of about 2: a net whose arg-max depends on its input."""
    torch.manual_seed(0)
    model: Any = build_train_model({"family": family, "variant": "A0"})
    return calibrate_statistics(model, photos, model.head.fc)


def mixed_name(option: int | list[str]) -> str:
    count = option if isinstance(option, int) else " + ".join(option)
    return f"onnxruntime int8, {count} float"


def agreement(served: ServingModel, x: torch.Tensor, reference: torch.Tensor) -> float:
    with torch.inference_mode():
        got = torch.cat([served.logits(row.unsqueeze(0)).float() for row in x])
    return (got.argmax(1) == reference.argmax(1)).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["repvgg", "qarepvgg"], default="repvgg")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--float-layers", type=int, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--named", nargs="+", default=[], metavar="LAYER", help="also these layers float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    spec = {"family": args.family, "variant": "A0"}
    preprocess = convert(spec, build_train_model(spec).state_dict(), validate=False).deploy_spec.preprocess()
    photos = photographs()
    calibration = crops(photos, preprocess, CALIBRATION)
    centre = PixelNormaliser(preprocess, 3)(torch.cat([image_to_pixels(p, preprocess, 3) for p in photos]))
    state = calibrated(args.family, centre.contiguous()).state_dict()
    started = time.perf_counter()
    result = convert(spec, state, serving=SERVED["onnxruntime int8"], calibration=calibration)
    conversion_s = time.perf_counter() - started
    int8, quantization = result.report.int8, result.report.quantization
    assert int8 is not None and quantization is not None
    with torch.inference_mode():
        reference = copy.deepcopy(result.deploy_model)(centre.contiguous())
    assert result.onnx is not None
    fit, held_out = split_calibration(calibration)
    mixed, mixed_models = [], {}
    options: list[int | list[str]] = [k for k in args.float_layers if k > 0]
    for option in options + ([args.named] if args.named else []):
        model_bytes, report = quantize_gated(
            result.onnx, result.deploy_model, quantization, fit, held_out, 0.0, option
        )
        mixed.append({"float_layers": option, "int8": report.model_dump()})
        mixed_models[mixed_name(option)] = model_bytes
    with tempfile.TemporaryDirectory() as scratch:
        result.save(Path(scratch) / "a0", export=False)
        sizes = warmup_batch_sizes(max(args.batches))
        served = {name: load_for_serving(Path(scratch) / "a0", o, "cpu", sizes) for name, o in SERVED.items()}
        int8_options = SERVED["onnxruntime int8"]
        for name, model_bytes in mixed_models.items():
            served[name] = prepare_for_serving(model_bytes, result.deploy_spec, int8_options, "cpu", sizes)
        photos_top1 = {
            name: agreement(model, centre.contiguous(), reference) for name, model in served.items()
        }
        timings = time_rounds(served, args.batches, args.repeats)
    payload = {
        "benchmark": "int8_bench",
        "model": f"{args.family} A0 (random weights, BatchNorm calibrated on the 12 photographs)",
        "command": f"python benchmarks/int8_bench.py --family {args.family} --float-layers "
        + " ".join(map(str, args.float_layers))
        + (f" --named {' '.join(args.named)}" if args.named else ""),
        "environment": {**environment(), "cpu_capabilities": cpu_capabilities().model_dump()},
        "runtimes": runtime_versions(),
        "batches": args.batches,
        "repeats": args.repeats,
        "threads": args.threads,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "conversion_s": round(conversion_s, 2),
        "conversion_timings": result.timings,
        "int8": int8.model_dump(),
        "mixed_precision": mixed,
        "top1_agreement_with_fp32_on_photographs": photos_top1,
        "quantization": {
            "worst_layers": quantization.worst_layers,
            "all_layers_simulated": quantization.all_layers.model_dump(),
            "layers": [
                {
                    "name": layer.name,
                    "outlier_ratio": layer.outlier_ratio,
                    "channel_spread": layer.channel_spread,
                    "output_max": layer.output_max,
                    "int8_alone": layer.int8.model_dump(),
                }
                for layer in quantization.layers
            ],
        },
        "timings": timings,
    }
    path = write_json(f"int8_bench_cpu_{args.family}.json", payload)
    print_table(payload)
    print(f"written {path}")


def time_rounds(served: dict[str, ServingModel], batches: list[int], repeats: int) -> dict[str, Any]:
    """Per batch: each round calls every served net once, in turn, on the same input."""
    out: dict[str, Any] = {}
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224)
        times: dict[str, list[float]] = {name: [] for name in served}
        with torch.inference_mode():
            for _ in range(3):
                for model in served.values():
                    model.logits(x)
            for _ in range(repeats):
                for name, model in served.items():
                    start = time.perf_counter()
                    model.logits(x)
                    times[name].append(time.perf_counter() - start)
        int8, fp32 = times["onnxruntime int8"], times["onnxruntime fp32"]
        out[str(batch)] = {
            name: {
                "median_s": statistics.median(values),
                "images_per_s": batch / statistics.median(values),
                "int8_speedup_median_of_rounds": statistics.median(
                    [t / q for t, q in zip(values, int8, strict=True)]
                ),
                "speedup_over_onnxruntime_fp32_median_of_rounds": statistics.median(
                    [f / t for f, t in zip(fp32, values, strict=True)]
                ),
            }
            for name, values in times.items()
        }
    return out


def print_table(payload: dict[str, Any]) -> None:
    batches = payload["batches"]
    print(
        "| served as | top-1 agreement with fp32 (photographs) |"
        + "".join(f" batch {b}: ms, int8 speedup |" for b in batches)
    )
    for name, top1 in payload["top1_agreement_with_fp32_on_photographs"].items():
        line = f"| {name} | {top1:.2f} |"
        for b in batches:
            t = payload["timings"][str(b)][name]
            line += f" {1e3 * t['median_s']:.1f}, {t['int8_speedup_median_of_rounds']:.2f}x |"
        print(line)
    int8 = payload["int8"]
    print(
        f"held-out agreement {int8['top1_agreement']:.3f} on {int8['held_out_samples']} crops, logits error "
        f"{int8['logits_rel_error']:.3e}; worst layers {payload['quantization']['worst_layers']}; load "
        f"{payload['load_average_1_5_15min']}"
    )
    print(
        "| float32 layers | held-out agreement | held-out logits error | photographs agreement |"
        + "".join(f" batch {b}: ms, x onnxruntime fp32 |" for b in batches)
    )
    rows = [("onnxruntime int8", int8)]
    rows += [(mixed_name(m["float_layers"]), m["int8"]) for m in payload["mixed_precision"]]
    for name, report in rows:
        layers = ", ".join(report["float_layers"]) or "none"
        photos = payload["top1_agreement_with_fp32_on_photographs"][name]
        line = (
            f"| {len(report['float_layers'])} ({layers}) | {report['top1_agreement']:.3f} | "
            f"{report['logits_rel_error']:.3f} | {photos:.2f} |"
        )
        for b in batches:
            t = payload["timings"][str(b)][name]
            line += (
                f" {1e3 * t['median_s']:.1f}, {t['speedup_over_onnxruntime_fp32_median_of_rounds']:.2f}x |"
            )
        print(line)


if __name__ == "__main__":
    main()
