"""Deploy-form inference speed: training form vs our deploy net vs timm's reparameterized model.

All three come from the same random weights (timm model -> its state dict -> our conversion), run
eagerly in fp32 under torch.inference_mode, interleaved, in one process. On CUDA (when present)
the same comparison runs in fp16 and bf16 with channels_last, our net also under torch.compile,
and achieved TFLOP/s are reported (FLOPs counted with torch.utils.flop_counter).

Usage: python benchmarks/inference_bench.py [--models A0 B1 B3 S0] [--batches 1 8 64] [--repeats 5]
Writes benchmarks/results/inference_bench_<device>.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from _common import MODELS, environment, timed, write_json
from torch.utils.flop_counter import FlopCounterMode

import reparam_core  # noqa: F401  (allocator option before torch allocates)


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return int(counter.get_total_flops())


def variants(key: str, device: str) -> dict[str, torch.nn.Module]:
    import timm
    from timm.utils.model import reparameterize_model

    from reparam_core.convert import convert

    timm_name, spec = MODELS[key]
    train = timm.create_model(timm_name).eval()
    ours = convert(spec, train.state_dict(), validate=False).deploy_model.eval()
    theirs = reparameterize_model(train).eval()
    return {"train": train.to(device), "ours": ours.to(device), "timm": theirs.to(device)}


def bench(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int, sync: bool) -> dict[str, float]:
    with torch.inference_mode():
        for model in models.values():  # warm-up (allocator, cuDNN autotuning, compile)
            model(x)
        samples: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                samples[name] += timed(lambda m=model: m(x), 1, sync)
    return {name: statistics.median(t) for name, t in samples.items()}


def run_cpu(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for key in args.models:
        models = variants(key, "cpu")
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224)
            repeats = args.repeats if batch * (3 if key == "B3" else 1) <= 8 else max(2, args.repeats // 2)
            t = bench(models, x, repeats, sync=False)
            rows.append(
                {
                    "model": key,
                    "batch": batch,
                    "dtype": "float32",
                    "seconds": t,
                    "ours_vs_timm": t["timm"] / t["ours"],
                    "ours_vs_train": t["train"] / t["ours"],
                    "images_per_s_ours": batch / t["ours"],
                }
            )
            ms = {name: f"{seconds * 1e3:9.1f} ms" for name, seconds in t.items()}
            speed = f"ours/timm {rows[-1]['ours_vs_timm']:.2f}x  ours/train {rows[-1]['ours_vs_train']:.2f}x"
            line = f"{key:3} batch {batch:3d}: train {ms['train']}  ours {ms['ours']}  timm {ms['timm']}"
            print(f"{line}  {speed}", flush=True)
    return rows


def run_cuda(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for key in args.models:
        base = variants(key, "cuda")
        for dtype in (torch.float16, torch.bfloat16):
            models = {n: m.to(dtype=dtype, memory_format=torch.channels_last) for n, m in base.items()}
            models["ours_compiled"] = torch.compile(models["ours"], mode="max-autotune")
            for batch in (*args.batches, 256):
                x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype).to(
                    memory_format=torch.channels_last
                )
                t = bench(models, x, args.repeats, sync=True)
                work = flops(models["ours"], x)
                rows.append(
                    {
                        "model": key,
                        "batch": batch,
                        "dtype": str(dtype).removeprefix("torch."),
                        "seconds": t,
                        "ours_vs_timm": t["timm"] / t["ours"],
                        "ours_vs_train": t["train"] / t["ours"],
                        "tflops": {name: work / s / 1e12 for name, s in t.items()},
                    }
                )
                print(
                    f"{key} {rows[-1]['dtype']} batch {batch}: "
                    + ", ".join(
                        f"{n} {s * 1e3:.2f} ms ({work / s / 1e12:.0f} TFLOP/s)" for n, s in t.items()
                    ),
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cpu = run_cpu(args)
    write_json("inference_bench_cpu.json", {"environment": environment(), "results": cpu})
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        write_json("inference_bench_cuda.json", {"environment": environment(), "results": run_cuda(args)})


if __name__ == "__main__":
    main()
