"""Checkpoint file -> deploy weights: ours vs timm, side by side in one run.

ours:  reparam_core.convert(spec, path, validate=False) - safe load, key mapping and strict check,
       fp64 fusion, fp32 deploy net rebuilt from its spec (the gate is timed separately).
timm:  torch.load(weights_only=True) + timm.create_model + load_state_dict + reparameterize_model.
       (``--models all``: every preset we ship; those timm lacks - the g2 RepVGGs, RepOpt-VGG - are
       timed on our side only, from a checkpoint of our own training net.)

``--load both`` times every model idle and with a second process busy on one core (single-threaded
matmuls pinned to it, see ``_load.py``), the two conditions interleaved repeat by repeat, and adds
``ours_all_threads``: our conversion with its memory-bound stages on every intra-op thread instead
of one (``reparam_core.threads``), the policy the default is measured against.

Usage: python benchmarks/convert_bench.py [--models A0 B1 B3 S0 | all] [--repeats 3]
                                          [--device cpu|cuda|all] [--load idle|both] [--dry-run]
Writes benchmarks/results/convert_bench_<device>.json (``--load both``: convert_bench_<device>_load.json),
rewritten after every model, and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from _common import MODELS, environment, every_preset, summary, write_json
from _load import BusyCore

import reparam_core.threads

Contender = Callable[[], dict[str, float]]  # runs once, returns our stage timings ({} for timm)


def contenders(
    timm_name: str | None, spec: dict[str, str], device: str, path: Path, all_threads: bool
) -> dict[str, Contender]:
    import timm
    from timm.utils.model import reparameterize_model

    from reparam_core import convert

    def ours(threads: int | None) -> Contender:
        def run() -> dict[str, float]:
            policy = reparam_core.threads.MEMORY_BOUND_THREADS
            reparam_core.threads.MEMORY_BOUND_THREADS = threads or policy
            try:
                return convert(spec, path, device=device, validate=False).timings
            finally:
                reparam_core.threads.MEMORY_BOUND_THREADS = policy

        return run

    def theirs() -> dict[str, float]:
        assert timm_name is not None
        model = timm.create_model(timm_name)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        reparameterize_model(model.to(device).eval())
        return {}

    runs = {"ours": ours(None)}
    if all_threads:
        runs["ours_all_threads"] = ours(torch.get_num_threads())
    if timm_name:
        runs["timm"] = theirs
    return runs


def once(run: Contender, sync: bool) -> tuple[float, dict[str, float]]:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    stages = run()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start, stages


def bench_model(
    key: str,
    timm_name: str | None,
    spec: dict[str, str],
    device: str,
    repeats: int,
    folder: Path,
    load: BusyCore | None,
) -> dict[str, Any]:
    import timm

    from reparam_core import build_train_model, convert

    path = folder / f"{key}.pth"
    source = timm.create_model(timm_name) if timm_name else build_train_model(spec)
    torch.save(source.state_dict(), path)
    runs = contenders(timm_name, spec, device, path, all_threads=load is not None)
    conditions = ["idle", "busy"] if load is not None else ["idle"]
    sync = device == "cuda"
    for run in runs.values():  # warm-up: imports, allocator, cuDNN
        run()
    seconds: dict[str, dict[str, list[float]]] = {c: {name: [] for name in runs} for c in conditions}
    fuse: dict[str, list[float]] = {c: [] for c in conditions}
    for i in range(repeats):  # interleaved so drift affects both alike; the order rotates
        for condition in conditions:
            if load is not None:
                load.switch(condition == "busy")
            names = list(runs)[i % len(runs) :] + list(runs)[: i % len(runs)]
            for name in names:
                elapsed, stages = once(runs[name], sync)
                seconds[condition][name].append(elapsed)
                if name == "ours":
                    fuse[condition].append(stages["fuse"])
    if load is not None:
        load.switch(False)
    gate = convert(spec, path, device=device)
    row: dict[str, Any] = {"model": key, "device": device}
    for condition in conditions:
        times = seconds[condition]
        result: dict[str, Any] = {name: summary(t) for name, t in times.items()}
        result["ours_fuse_median_s"] = statistics.median(fuse[condition])
        for name in [n for n in runs if n.startswith("ours")]:
            suffix = name.removeprefix("ours")
            result[f"speedup{suffix}"] = (
                statistics.median(times["timm"]) / statistics.median(times[name]) if timm_name else None
            )
        row[condition] = result
    row["ours_stage_s"] = gate.timings
    row["ours_with_gate_s"] = sum(gate.timings.values())
    row["gate_max_rel_error_fp64"] = max(r.max_rel_error for r in gate.report.fp64)
    return row


def print_table(rows: list[dict[str, Any]], conditions: list[str]) -> None:
    header = ("model", "load", "ours s", "timm s", "speedup", "all-thr s", "all-thr x", "fuse s", "gate err")
    print("{:16} {:>5} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>9}".format(*header))
    for r in rows:
        for condition in conditions:
            c = r[condition]
            timm_s = f"{c['timm']['median_s']:8.3f}" if "timm" in c else f"{'-':>8}"
            speedup = f"{c['speedup']:7.2f}x" if c.get("speedup") else f"{'-':>8}"
            if "ours_all_threads" in c:
                all_s = f"{c['ours_all_threads']['median_s']:9.3f}"
                all_x = f"{c['speedup_all_threads']:8.2f}x" if c.get("speedup_all_threads") else f"{'-':>9}"
            else:
                all_s = all_x = f"{'-':>9}"
            print(
                f"{r['model']:16} {condition:>5} {c['ours']['median_s']:8.3f} {timm_s} {speedup} {all_s}"
                f" {all_x} {c['ours_fuse_median_s']:7.3f} {r['gate_max_rel_error_fp64']:9.1e}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=[*MODELS, "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--load", default="idle", choices=["idle", "both"])
    parser.add_argument("--dry-run", action="store_true", help="parse the arguments, print them, run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"convert_bench: {vars(args)}")
        return
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        raise SystemExit("--device cuda: no CUDA device")
    table = every_preset() if "all" in args.models else {m: MODELS[m] for m in args.models}
    conditions = ["idle", "busy"] if args.load == "both" else ["idle"]
    for device in devices:
        name = f"convert_bench_{device}{'_load' if args.load == 'both' else ''}.json"
        meta: dict[str, Any] = {
            "environment": environment(),
            "repeats": args.repeats,
            "load_average_at_start": os.getloadavg(),  # what else ran on the machine
        }
        rows: list[dict[str, Any]] = []
        with (
            tempfile.TemporaryDirectory() as tmp,
            BusyCore() if args.load == "both" else nullcontext() as load,
        ):
            if load is not None:
                meta["load"] = (
                    f"busy: a second process doing single-threaded fp32 matmuls pinned to core {load.core}"
                )
            for key, (
                timm_name,
                spec,
            ) in table.items():  # written after every model: a cut-short run keeps them
                rows.append(bench_model(key, timm_name, spec, device, args.repeats, Path(tmp), load))
                path = write_json(name, {**meta, "load_average_now": os.getloadavg(), "results": rows})
        print(f"\n{device}: checkpoint file -> fp32 deploy weights (median of {args.repeats}; {path.name})")
        print_table(rows, conditions)


if __name__ == "__main__":
    main()
