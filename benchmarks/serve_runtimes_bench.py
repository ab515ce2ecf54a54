"""Serving runtimes on this CPU: RepVGG-A0 served by each runtime x precision that passes the
serving check, against timm's float32 eager deploy net.

The net: timm's ``repvgg_a0`` with random weights whose BatchNorm statistics are calibrated on
photographs (as a trained net has them), converted by ``convert`` with ``onnx=True`` and each
serving configuration: the conversion runs the same serving check as the service (the served
outputs against the float64 training net, bounded relative to the training net's own error in that
precision) and reports the top-1 agreement on the gate inputs. Configurations that fail the check
(or are refused here, e.g. bf16 without native bf16) are listed, not timed.

Timing: each configuration is served as the service serves it (``load_for_serving`` on the saved
artifact folder, warmed up) and called with the same float32 NCHW batch as timm's deploy net
(fp32, NCHW, ``torch.inference_mode``). Interleaved pairs (timm, configuration) in one process;
per configuration the medians of both and the median of the per-pair ratios (timm time / its
time: > 1 is faster than timm).

Top-1 on photographs: scikit-image's sample photographs preprocessed exactly as the service does
(``service.images.image_to_pixels``: resize + centre crop to uint8 pixels, normalised by the served
net), each configuration's arg-max against the float64 training net's.

Threads: ``--threads N`` sets PyTorch's threads, and with them those of ONNX Runtime and OpenVINO
(the serving runtimes use as many as PyTorch). On a loaded machine PyTorch's OpenMP threads wait
for each other at every barrier while a core is taken away: compare runs at 1 thread too. The load
average before and after is recorded.

Usage: python benchmarks/serve_runtimes_bench.py [--batches 1 8] [--repeats 30] [--threads N]
Writes benchmarks/results/serve_runtimes_bench_cpu_<N>threads.json and prints the table.
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

from reparam_core import ServingOptions, convert
from reparam_core.deploy import (
    PixelNormaliser,
    ServingModel,
    cpu_capabilities,
    load_for_serving,
    runtime_versions,
    warmup_batch_sizes,
)
from reparam_core.errors import ReparamError
from service.images import image_to_pixels

SPEC = {"family": "repvgg", "variant": "A0"}
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "torch fp32 channels_last": {"runtime": "torch", "precision": "fp32", "channels_last": True},
    "torch bf16 channels_last": {"runtime": "torch", "precision": "bf16", "channels_last": True},
    "onnxruntime fp32": {"runtime": "onnxruntime", "precision": "fp32"},
    "openvino fp32": {"runtime": "openvino", "precision": "fp32"},
    "openvino bf16": {"runtime": "openvino", "precision": "bf16"},
}
# scikit-image's sample photographs (RGB), some at other aspect ratios than their own.
PHOTOS = [
    ("astronaut", None),
    ("coffee", None),
    ("chelsea", None),
    ("rocket", None),
    ("hubble_deep_field", None),
    ("immunohistochemistry", None),
    ("retina", None),
    ("colorwheel", None),
    ("coffee", (300, 700)),
    ("astronaut", (640, 360)),
    ("chelsea", (1000, 300)),
    ("rocket", (400, 400)),
]


def photographs() -> list[bytes]:
    from skimage import data

    images = []
    for name, size in PHOTOS:
        image = Image.fromarray(getattr(data, name)())
        if size is not None:
            image = image.resize(size)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def calibrated_timm() -> torch.nn.Module:
    """timm's RepVGG-A0, random weights, BatchNorm statistics of the photographs (a plain average
    over them) and logits scaled to a spread of about 2: a net whose arg-max depends on its input."""
    import timm

    torch.manual_seed(0)
    model: Any = timm.create_model("repvgg_a0", pretrained=False)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    batch = torch.stack([transform(Image.open(io.BytesIO(p)).convert("RGB")) for p in photographs()])
    return calibrate_statistics(model, batch, model.get_classifier())


def photo_agreement(served: ServingModel, pixels: torch.Tensor, reference: torch.Tensor) -> float:
    with torch.inference_mode():
        got = torch.cat([served.logits(p.unsqueeze(0)).float() for p in pixels])
    return (got.argmax(1) == reference.argmax(1)).double().mean().item()


def check(name: str, options: ServingOptions, train: torch.nn.Module, out: Path) -> dict[str, Any]:
    """Convert with this configuration (the serving check runs in it); save the passing ones."""
    started = time.perf_counter()
    try:
        result = convert(SPEC, train.state_dict(), serving=options, onnx=True)
    except ReparamError as exc:  # refused (SpecError) or failed the check (EquivalenceError)
        return {"name": name, "options": options.model_dump(), "passed": False, "refused": str(exc)}
    served = result.report.serving
    assert served is not None and result.report.onnx is not None
    result.save(out / name.replace(" ", "_"), export=False)
    return {
        "name": name,
        "options": options.model_dump(),
        "passed": result.report.passed,
        "conversion_s": round(time.perf_counter() - started, 3),
        "serving_check": served.equivalence.model_dump(),
        "train_same_precision": served.train_same_precision.model_dump(),
        "onnx_check": result.report.onnx.model_dump(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    from timm.utils.model import reparameterize_model

    train = calibrated_timm()
    timm_deploy = reparameterize_model(copy.deepcopy(train)).eval()
    spec_shape = (3, 224, 224)
    photos = photographs()
    preprocess = convert(SPEC, train.state_dict(), validate=False).deploy_spec.preprocess()
    pixels = torch.cat([image_to_pixels(p, preprocess, 3) for p in photos])
    normaliser = PixelNormaliser(preprocess, 3)
    with torch.inference_mode():
        reference = copy.deepcopy(train).double()(normaliser(pixels).double())

    rows: list[dict[str, Any]] = []
    served: dict[str, ServingModel] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, values in CONFIGURATIONS.items():
            options = ServingOptions(**values)
            row = check(name, options, train, Path(scratch))
            if row["passed"]:
                folder = Path(scratch) / name.replace(" ", "_")
                served[name] = load_for_serving(folder, options, "cpu", warmup_batch_sizes(max(args.batches)))
                row["top1_photos"] = photo_agreement(served[name], pixels, reference)
            rows.append(row)
            print(f"{name}: {'passed' if row['passed'] else 'NOT served: ' + row.get('refused', 'failed')}")
        with torch.inference_mode():
            timm_fp32 = (timm_deploy(normaliser(pixels)).argmax(1) == reference.argmax(1)).double().mean()
        timings = time_pairs(timm_deploy, served, args.batches, args.repeats, spec_shape)

    for row in rows:
        row["timings"] = timings.get(row["name"], {})
    payload = {
        "benchmark": "serve_runtimes_bench",
        "model": "RepVGG-A0 (timm repvgg_a0, random weights, BatchNorm calibrated on the photographs)",
        "environment": {**environment(), "cpu_capabilities": cpu_capabilities().model_dump()},
        "runtimes": runtime_versions(),
        "photos": [f"skimage.data.{n}{'' if s is None else f' resized {s[0]}x{s[1]}'}" for n, s in PHOTOS],
        "timm_fp32_top1_photos": timm_fp32.item(),
        "batches": args.batches,
        "repeats": args.repeats,
        "threads": args.threads,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "configurations": rows,
    }
    path = write_json(f"serve_runtimes_bench_cpu_{args.threads}threads.json", payload)
    print_table(rows, args.batches)
    print(f"written {path}")


def time_pairs(
    timm_deploy: torch.nn.Module,
    served: dict[str, ServingModel],
    batches: list[int],
    repeats: int,
    shape: tuple[int, int, int],
) -> dict[str, dict[str, Any]]:
    """Per configuration and batch: (timm, configuration) pairs, interleaved round by round."""
    out: dict[str, dict[str, Any]] = {name: {} for name in served}
    for batch in batches:
        x = torch.randn(batch, *shape)
        with torch.inference_mode():
            for _ in range(3):  # warm-up
                timm_deploy(x)
                for model in served.values():
                    model.logits(x)
            base: dict[str, list[float]] = {name: [] for name in served}
            ours: dict[str, list[float]] = {name: [] for name in served}
            for _ in range(repeats):
                for name, model in served.items():
                    start = time.perf_counter()
                    timm_deploy(x)
                    middle = time.perf_counter()
                    model.logits(x)
                    base[name].append(middle - start)
                    ours[name].append(time.perf_counter() - middle)
        for name in served:
            ratios = [b / o for b, o in zip(base[name], ours[name], strict=True)]
            out[name][str(batch)] = {
                "timm_fp32_eager_median_s": statistics.median(base[name]),
                "median_s": statistics.median(ours[name]),
                "speedup_vs_timm_median_of_pairs": statistics.median(ratios),
                "images_per_s": batch / statistics.median(ours[name]),
            }
    return out


def print_table(rows: list[dict[str, Any]], batches: list[int]) -> None:
    header = "| configuration | check max rel error (bound) | top-1 gate | top-1 photos |"
    header += "".join(f" batch {b}: ms (timm ms) x timm |" for b in batches)
    print(header)
    for row in rows:
        if not row["passed"]:
            print(f"| {row['name']} | not served: {row.get('refused', 'failed the check')} |")
            continue
        check = row["serving_check"]
        line = (
            f"| {row['name']} | {check['max_rel_error']:.2e} ({check['tolerance']:.2e}) | "
            f"{check['top1_agreement']:.2f} | {row['top1_photos']:.2f} |"
        )
        for b in batches:
            t = row["timings"][str(b)]
            line += (
                f" {1e3 * t['median_s']:.1f} ({1e3 * t['timm_fp32_eager_median_s']:.1f}) "
                f"{t['speedup_vs_timm_median_of_pairs']:.2f}x |"
            )
        print(line)


if __name__ == "__main__":
    main()
