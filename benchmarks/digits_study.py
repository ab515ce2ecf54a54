"""Real data, real training: does a fused RepVGG survive INT8, and does QARepVGG fix it?

scikit-learn's handwritten digits (1797 images of 8x8 pixels, 10 classes) upscaled to 32x32 (bilinear)
and repeated over 3 channels; a fixed split of 1297 training and 500 test images. Two small nets with
the same stages (stem 16, stages 2x16, 2x32, 2x64, a 10-class head), one of RepVGG blocks and one of
QARepVGG blocks (``qarepvgg``: BN on the 3x3 branch only, one BN after the sum), trained from the
same seed with SGD (momentum 0.9, weight decay 1e-4, cosine schedule) on the CPU for a few epochs,
then converted with ``convert`` and ``serving={"runtime": "onnxruntime", "precision": "int8"}``:
ONNX Runtime's static quantization calibrated on 64 training images (48 to calibrate, 16 held out
for the agreement gate, which is set to 0 here so both nets are reported). Accuracy on the 500 test
images: the training net (float32, eval), the fused deploy net (float32) and ``model.int8.onnx`` in
ONNX Runtime; and the quantization report's diagnosis (the worst layers alone in int8, outlier ratios).

Usage: python benchmarks/digits_study.py [--epochs 12] [--threads N]
Writes benchmarks/results/digits_study_cpu.json and prints the table.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import environment, write_json
from torch import Tensor, nn

from reparam_core import ServingOptions, build_train_model, convert
from reparam_core.deploy.runtimes import onnx_runner

STAGES = [{"depth": 2, "width": 16}, {"depth": 2, "width": 32}, {"depth": 2, "width": 64}]
NETS = {
    "RepVGG": {"family": "repvgg", "stem": {"width": 16}, "stages": STAGES},
    "QARepVGG": {"family": "qarepvgg", "stem": {"width": 16}, "stages": STAGES},
}
COMMON = {"num_classes": 10, "input_size": [32, 32], "preprocess": {"resize": 32, "crop": 32}}
TEST, CALIBRATION = 500, 64
INT8 = ServingOptions(runtime="onnxruntime", precision="int8", int8_min_agreement=0.0)


def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train_x, train_y, test_x, test_y)``: 32x32x3 inputs normalised to mean 0, std 1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:TEST], order[TEST:]
    return x[train], y[train], x[test], y[test]


def train(spec: dict[str, Any], x: Tensor, y: Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_train_model(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    steps = epochs * ((len(y) + 63) // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).double().mean())


def study(name: str, spec: dict[str, Any], data: tuple[Tensor, ...], epochs: int) -> dict[str, Any]:
    train_x, train_y, test_x, test_y = data
    started = time.perf_counter()
    model = train(spec, train_x, train_y, epochs)
    train_s = time.perf_counter() - started
    result = convert(spec, model.state_dict(), serving=INT8, calibration=train_x[:CALIBRATION])
    int8_run = onnx_runner("onnxruntime", result.onnx_int8 or b"", "int8")
    with torch.inference_mode():
        train_logits, deploy_logits = model(test_x), result.deploy_model(test_x)
    int8_logits = torch.cat([int8_run(chunk.contiguous()) for chunk in test_x.split(100)])
    report, quantization = result.report, result.report.quantization
    assert report.int8 is not None and quantization is not None
    worst = [quantization.layer(layer) for layer in quantization.worst_layers]
    return {
        "net": name,
        "spec": spec,
        "epochs": epochs,
        "train_s": round(train_s, 1),
        "accuracy": {
            "train_net_fp32": accuracy(train_logits, test_y),
            "deploy_fp32": accuracy(deploy_logits, test_y),
            "int8_onnxruntime": accuracy(int8_logits, test_y),
        },
        "int8_agreement_with_fp32_test": float(
            (int8_logits.argmax(1) == deploy_logits.argmax(1)).double().mean()
        ),
        "int8_logits_rel_error_test": float((int8_logits - deploy_logits).norm() / deploy_logits.norm()),
        "gate_held_out": report.int8.model_dump(),
        "fp64_max_rel_error": max(r.max_rel_error for r in report.fp64),
        "quantization": {
            "all_layers_simulated": quantization.all_layers.model_dump(),
            "worst_layers": [
                {
                    "name": layer.name,
                    "int8_alone": layer.int8.model_dump(),
                    "outlier_ratio": layer.outlier_ratio,
                    "channel_spread": layer.channel_spread,
                    "output_max": layer.output_max,
                    "output_p9999": layer.output_p9999,
                }
                for layer in worst
            ],
            "max_outlier_ratio": max(layer.outlier_ratio for layer in quantization.layers),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data = digits()
    rows = [study(name, {**spec, **COMMON}, data, args.epochs) for name, spec in NETS.items()]
    payload = {
        "benchmark": "digits_study",
        "data": f"sklearn load_digits, 32x32 bilinear x 3 channels, {len(data[1])} train / {TEST} test",
        "environment": environment(),
        "threads": args.threads,
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "nets": rows,
    }
    path = write_json("digits_study_cpu.json", payload)
    print("| net | fp32 train net | fp32 deploy | int8 (ORT) | int8 vs fp32 agreement | worst layers alone |")
    for row in rows:
        acc = row["accuracy"]
        worst = ", ".join(
            f"{w['name']} {w['int8_alone']['logits_rel_error']:.3f}"
            for w in row["quantization"]["worst_layers"]
        )
        print(
            f"| {row['net']} | {acc['train_net_fp32']:.3f} | {acc['deploy_fp32']:.3f} | "
            f"{acc['int8_onnxruntime']:.3f} | {row['int8_agreement_with_fp32_test']:.3f} | {worst} |"
        )
    print(f"written {path}")


if __name__ == "__main__":
    main()
