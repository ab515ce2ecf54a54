"""Deploy-form inference speed: training form vs our deploy net vs timm's reparameterized model.

All nets come from the same random weights (timm model -> its state dict -> our conversion) and
run eagerly under torch.inference_mode, interleaved, in one process.

CPU, float32: the training form, our deploy net and timm's deploy net in the default (NCHW)
layout; then our deploy net as served with the default serving options (channels_last) next to
timm's deploy net given the same layout. Ratios compare like with like.

CUDA (when present): float16 and bfloat16, channels_last, batch 1/8/64/256 - training form, timm's
deploy net, our deploy net as served (``ServingModel``), and the same compiled with
``torch.compile(mode="max-autotune")``; achieved TFLOP/s (FLOPs counted with
torch.utils.flop_counter) next to the dense matmul peak measured on the same GPU.

Usage: python benchmarks/inference_bench.py [--models A0 B1 B3 S0] [--batches 1 8 64] [--repeats 5]
                                            [--device cpu|cuda|all] [--compile-mode max-autotune]
                                            [--dry-run]
Writes benchmarks/results/inference_bench_<device>.json (the CUDA file after every row, so a run
cut short keeps what it measured) and prints the ratios.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from _common import MODELS, environment, timed, write_json
from torch.utils.flop_counter import FlopCounterMode

from reparam_core import ServingModel, ServingOptions

Forward = Callable[[torch.Tensor], torch.Tensor]


def flops(forward: Forward, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        forward(x)
    return int(counter.get_total_flops())


def nets(key: str) -> dict[str, torch.nn.Module]:
    import timm
    from timm.utils.model import reparameterize_model

    from reparam_core import convert

    timm_name, spec = MODELS[key]
    train = timm.create_model(timm_name).eval()
    ours = convert(spec, train.state_dict(), validate=False).deploy_model.eval()
    theirs = reparameterize_model(train).eval()
    return {"train": train, "ours": ours, "timm": theirs}


def channels_last(module: torch.nn.Module) -> Forward:
    """``module`` in channels_last, fed the NCHW batch converted the way our served nets convert it."""
    return lambda x: module(x.contiguous(memory_format=torch.channels_last))


def bench(forwards: dict[str, Forward], x: torch.Tensor, repeats: int, sync: bool) -> dict[str, float]:
    with torch.inference_mode():
        for forward in forwards.values():  # warm-up (allocator, cuDNN autotuning, compile)
            forward(x)
        samples: dict[str, list[float]] = {name: [] for name in forwards}
        for _ in range(repeats):
            for name, forward in forwards.items():
                samples[name] += timed(lambda f=forward: f(x), 1, sync)
    return {name: statistics.median(t) for name, t in samples.items()}


def run_cpu(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for key in args.models:
        base = nets(key)
        served = ServingModel(copy.deepcopy(base["ours"]), ServingOptions(), "cpu")
        forwards: dict[str, Forward] = {
            "train": base["train"],
            "ours": base["ours"],
            "timm": base["timm"],
            "ours_served": served.logits,
            "timm_channels_last": channels_last(
                copy.deepcopy(base["timm"]).to(memory_format=torch.channels_last)
            ),
        }
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224)
            repeats = args.repeats if batch * (3 if key == "B3" else 1) <= 8 else max(2, args.repeats // 2)
            t = bench(forwards, x, repeats, sync=False)
            rows.append(
                {
                    "model": key,
                    "batch": batch,
                    "dtype": "float32",
                    "seconds": t,
                    "ours_vs_timm": t["timm"] / t["ours"],
                    "ours_vs_train": t["train"] / t["ours"],
                    "served_vs_timm_channels_last": t["timm_channels_last"] / t["ours_served"],
                    "served_vs_train": t["train"] / t["ours_served"],
                    "images_per_s_served": batch / t["ours_served"],
                }
            )
            r = rows[-1]
            print(
                f"{key:3} batch {batch:3d}: "
                + "  ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in t.items())
                + f"  | ours/timm {r['ours_vs_timm']:.2f}x,"
                f" served/timm-cl {r['served_vs_timm_channels_last']:.2f}x,"
                f" served/train {r['served_vs_train']:.2f}x",
                flush=True,
            )
    return rows


def matmul_peak(dtype: torch.dtype, size: int = 8192, repeats: int = 20) -> float:
    """Dense matmul TFLOP/s on this GPU in ``dtype`` (the ceiling the conv numbers are read against)."""
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    a @ b
    seconds = statistics.median(timed(lambda: a @ b, repeats, sync=True))
    return 2 * size**3 / seconds / 1e12


def run_cuda(args: argparse.Namespace, save: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    peaks = {str(d).removeprefix("torch."): matmul_peak(d) for d in (torch.float16, torch.bfloat16)}
    print("dense matmul peak: " + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in peaks.items()), flush=True)
    rows: list[dict[str, Any]] = []
    done = {"matmul_peak_tflops": peaks, "compile_mode": args.compile_mode, "results": rows}
    for key in args.models:
        base = nets(key)
        for precision in ("fp16", "bf16"):
            eager = ServingOptions(precision=precision, channels_last=True)
            compiled = eager.model_copy(update={"compile": True, "compile_mode": args.compile_mode})
            dtype = eager.dtype
            layout = {"device": "cuda", "dtype": dtype, "memory_format": torch.channels_last}
            forwards: dict[str, Forward] = {
                "train": channels_last(copy.deepcopy(base["train"]).to(**layout)),
                "timm": channels_last(copy.deepcopy(base["timm"]).to(**layout)),
                "ours_served": ServingModel(copy.deepcopy(base["ours"]), eager, "cuda").logits,
                "ours_compiled": ServingModel(copy.deepcopy(base["ours"]), compiled, "cuda").logits,
            }
            for batch in dict.fromkeys((*args.batches, 256)):  # in the order given, 256 last unless named
                x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
                t = bench(forwards, x, args.repeats, sync=True)
                work = flops(forwards["ours_served"], x)
                rows.append(
                    {
                        "model": key,
                        "batch": batch,
                        "dtype": str(dtype).removeprefix("torch."),
                        "seconds": t,
                        "served_vs_timm": t["timm"] / t["ours_served"],
                        "compiled_vs_timm": t["timm"] / t["ours_compiled"],
                        "served_vs_train": t["train"] / t["ours_served"],
                        "tflops": {name: work / s / 1e12 for name, s in t.items()},
                        "peak_share": {
                            name: work / s / 1e12 / peaks[str(dtype).removeprefix("torch.")]
                            for name, s in t.items()
                        },
                    }
                )
                save(done)
                print(
                    f"{key} {rows[-1]['dtype']} batch {batch}: "
                    + ", ".join(
                        f"{n} {s * 1e3:.2f} ms ({work / s / 1e12:.0f} TFLOP/s)" for n, s in t.items()
                    ),
                    flush=True,
                )
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--compile-mode", default="max-autotune", help="torch.compile mode on CUDA")
    parser.add_argument("--dry-run", action="store_true", help="parse the arguments, print them, run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"inference_bench: {vars(args)}")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.device in ("cpu", "all"):
        cpu = run_cpu(args)
        write_json("inference_bench_cpu.json", {"environment": environment(), "results": cpu})
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        save = partial(_save_cuda, environment())
        save(run_cuda(args, save))


def _save_cuda(env: dict[str, Any], done: dict[str, Any]) -> None:
    write_json("inference_bench_cuda.json", {"environment": env, **done})


if __name__ == "__main__":
    main()
