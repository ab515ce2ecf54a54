"""Checkpoint file -> deploy weights: ours vs timm, side by side in one run.

ours:  reparam_core.convert(spec, path, validate=False) — safe load, key mapping and strict check,
       fp64 fusion, fp32 deploy net rebuilt from its spec (the gate is timed separately).
timm:  torch.load(weights_only=True) + timm.create_model + load_state_dict + reparameterize_model.
       (``--models all``: every preset we ship; those timm lacks - the g2 RepVGGs, RepOpt-VGG - are
       timed on our side only, from a checkpoint of our own training net.)

Usage: python benchmarks/convert_bench.py [--models A0 B1 B3 S0 | all] [--repeats 3] [--device cpu|cuda|all]
Writes benchmarks/results/convert_bench_<device>.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _common import MODELS, environment, every_preset, summary, timed, write_json


def bench_model(
    key: str, timm_name: str | None, spec: dict[str, str], device: str, repeats: int, folder: Path
) -> dict[str, Any]:
    import timm
    from timm.utils.model import reparameterize_model

    from reparam_core import build_train_model, convert

    path = folder / f"{key}.pth"
    source = timm.create_model(timm_name) if timm_name else build_train_model(spec)
    torch.save(source.state_dict(), path)

    def ours() -> None:
        convert(spec, path, device=device, validate=False)

    def theirs() -> None:
        assert timm_name is not None
        model = timm.create_model(timm_name)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        reparameterize_model(model.to(device).eval())

    sync = device == "cuda"
    ours()  # warm-up: imports, allocator, cuDNN
    if timm_name:
        theirs()
    ours_t: list[float] = []
    theirs_t: list[float] = []
    for _ in range(repeats):  # interleaved so drift affects both alike
        ours_t += timed(ours, 1, sync)
        if timm_name:
            theirs_t += timed(theirs, 1, sync)
    gate = convert(spec, path, device=device)
    timm_summary = summary(theirs_t) if theirs_t else None
    return {
        "model": key,
        "device": device,
        "ours": summary(ours_t),
        "timm": timm_summary,
        "speedup": timm_summary["median_s"] / statistics.median(ours_t) if timm_summary else None,
        "ours_stage_s": gate.timings,
        "ours_with_gate_s": sum(gate.timings.values()),
        "gate_max_rel_error_fp64": max(r.max_rel_error for r in gate.report.fp64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    table = every_preset() if "all" in args.models else {m: MODELS[m] for m in args.models}
    for device in devices:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [
                bench_model(key, timm_name, spec, device, args.repeats, Path(tmp))
                for key, (timm_name, spec) in table.items()
            ]
        path = write_json(f"convert_bench_{device}.json", {"environment": environment(), "results": rows})
        print(f"\n{device}: checkpoint file -> fp32 deploy weights (median of {args.repeats}; {path.name})")
        header = ("model", "ours s", "timm s", "speedup", "ours+gate s", "gate rel err")
        print("{:16} {:>8} {:>8} {:>8} {:>12} {:>13}".format(*header))
        for r in rows:
            ours = r["ours"]["median_s"]
            timm_s = f"{r['timm']['median_s']:8.3f}" if r["timm"] else f"{'-':>8}"
            speedup = f"{r['speedup']:7.2f}x" if r["speedup"] else f"{'-':>8}"
            gate_s, gate_err = r["ours_with_gate_s"], r["gate_max_rel_error_fp64"]
            print(f"{r['model']:16} {ours:8.3f} {timm_s} {speedup} {gate_s:12.2f} {gate_err:13.1e}")


if __name__ == "__main__":
    main()
