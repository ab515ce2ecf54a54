"""Verified conversion (ours, gate included) vs timm's unverified conversion, side by side in one run.

ours:      reparam_core.convert(spec, path) — load, fuse, and the equivalence gate (docs/gate.md):
           per-block float64 probes, stored weights vs float64 fused weights, stored net vs float64
           training net on a small whole-net input.
timm:      torch.load(weights_only=True) + timm.create_model + load_state_dict + reparameterize_model
           (no check at all). DBB/ACB nets have no timm counterpart: ours only.
old gate:  the previous gate, for its cost alone (re-fuse the whole net in float64, then float64
           forwards of both nets at the spec's input size, batch 2, and at a smaller non-square size,
           plus the stored net at the first), on a freshly loaded net; not part of ``ours``.
new gate:  the ``validate`` stage of ``ours``.

Interleaved per repeat (ours, timm, old gate) so drift and other processes' load affect all alike;
medians; the load average before and after is recorded.

Usage: python benchmarks/gate_bench.py [--models B3 A0 ...] [--repeats 3] [--no-old-gate]
Writes benchmarks/results/gate_bench_cpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import environment, summary, write_json

# benchmark key -> (timm model name or None, our architecture spec)
MODELS: dict[str, tuple[str | None, dict[str, str]]] = {
    "B3": ("repvgg_b3", {"family": "repvgg", "variant": "B3"}),
    "A0": ("repvgg_a0", {"family": "repvgg", "variant": "A0"}),
    "B1": ("repvgg_b1", {"family": "repvgg", "variant": "B1"}),
    "D2se": ("repvgg_d2se", {"family": "repvgg", "variant": "D2se"}),
    "S4": ("mobileone_s4", {"family": "mobileone", "variant": "S4"}),
    "A0-dbb": (None, {"family": "repvgg", "variant": "A0", "block": "dbb"}),
    "A0-acb": (None, {"family": "repvgg", "variant": "A0", "block": "acb"}),
}
DEFAULT = ["B3", "A0", "B1", "D2se", "S4", "A0-acb"]  # A0-dbb: its float64 fusion alone takes long


def old_gate(spec: dict[str, str], path: Path) -> float:
    """Seconds the previous gate took on a freshly loaded net (loading and fusing not timed)."""
    from reparam_core import reparameterize
    from reparam_core.arch import build_train_model, parse_spec
    from reparam_core.checkpoints import load_into, read_checkpoint
    from reparam_core.conversion import convert
    from reparam_core.equivalence import gate_shapes, measure, random_input, tf32_disabled
    from reparam_core.gate import FP32_FLOOR, SLACK

    stored = convert(spec, path, device="cpu", validate=False).deploy_model
    arch = parse_spec(spec)
    model = build_train_model(arch, device="meta")
    load_into(model, read_checkpoint(path)[0], torch.device("cpu"))
    model.eval()
    start = time.perf_counter()
    deploy = reparameterize(model.double())
    with tf32_disabled(), torch.inference_mode():
        for i, shape in enumerate(gate_shapes((2, arch.in_channels, *arch.input_size))):
            x = random_input(shape, i)
            reference = model(x)
            measure(reference, deploy(x), shape, torch.float64, "cpu", 1e-9)
            if i == 0:
                train32 = copy.deepcopy(model).float()(x.float())
                baseline = measure(reference, train32, shape, torch.float32, "cpu", None)
                bound = max(FP32_FLOOR, SLACK * baseline.max_rel_error)
                measure(reference, stored(x.float()), shape, torch.float32, "cpu", bound)
    return time.perf_counter() - start


def bench_model(
    key: str, timm_name: str | None, spec: dict[str, str], repeats: int, folder: Path, with_old: bool
) -> dict[str, Any]:
    import timm
    from timm.utils.model import reparameterize_model

    from reparam_core import build_train_model, convert

    path = folder / f"{key}.pth"
    source = timm.create_model(timm_name) if timm_name else build_train_model(spec)
    torch.save(source.state_dict(), path)
    del source

    gate_s: list[float] = []
    worst: list[float] = []

    def ours() -> None:
        result = convert(spec, path, device="cpu")
        gate_s.append(result.timings["validate"])
        worst.append(max(r.max_rel_error for r in result.report.fp64))

    def theirs() -> None:
        assert timm_name is not None
        model = timm.create_model(timm_name)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        reparameterize_model(model.eval())

    ours()  # warm-up: imports, allocator
    gate_s.clear()
    if timm_name:
        theirs()
    ours_t: list[float] = []
    theirs_t: list[float] = []
    old_t: list[float] = []
    for _ in range(repeats):  # interleaved so drift affects all alike
        start = time.perf_counter()
        ours()
        ours_t.append(time.perf_counter() - start)
        if timm_name:
            start = time.perf_counter()
            theirs()
            theirs_t.append(time.perf_counter() - start)
        if with_old:
            old_t.append(old_gate(spec, path))
    ours_median = statistics.median(ours_t)
    timm_summary = summary(theirs_t) if theirs_t else None
    new_gate = statistics.median(gate_s)
    return {
        "model": key,
        "ours_verified": summary(ours_t),
        "timm_unverified": timm_summary,
        "timm_over_ours": timm_summary["median_s"] / ours_median if timm_summary else None,
        "new_gate_s": summary(gate_s),
        "old_gate_s": summary(old_t) if old_t else None,
        "old_over_new_gate": statistics.median(old_t) / new_gate if old_t else None,
        "gate_max_rel_error_fp64": max(worst),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT, choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-old-gate", action="store_true", help="skip timing the previous gate")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            rows.append(bench_model(key, *MODELS[key], args.repeats, Path(tmp), not args.no_old_gate))
            print(f"{key}: done", flush=True)
    payload = {
        "environment": environment(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "repeats": args.repeats,
        "results": rows,
    }
    path = write_json("gate_bench_cpu.json", payload)
    print(
        f"\nverified conversion (ours) vs timm's unverified one, median of {args.repeats} ({path.name}); "
        f"load average {load_before[0]:.1f} -> {payload['load_average_after'][0]:.1f}"
    )
    header = ("model", "ours s", "timm s", "timm/ours", "new gate s", "old gate s", "old/new", "fp64 err")
    print("{:8} {:>8} {:>8} {:>9} {:>10} {:>10} {:>8} {:>9}".format(*header))
    for r in rows:
        timm_s = f"{r['timm_unverified']['median_s']:8.3f}" if r["timm_unverified"] else f"{'-':>8}"
        ratio = f"{r['timm_over_ours']:8.2f}x" if r["timm_over_ours"] else f"{'-':>9}"
        old = f"{r['old_gate_s']['median_s']:10.2f}" if r["old_gate_s"] else f"{'-':>10}"
        old_ratio = f"{r['old_over_new_gate']:7.1f}x" if r["old_over_new_gate"] else f"{'-':>8}"
        print(
            f"{r['model']:8} {r['ours_verified']['median_s']:8.3f} {timm_s} {ratio} "
            f"{r['new_gate_s']['median_s']:10.3f} {old} {old_ratio} {r['gate_max_rel_error_fp64']:9.1e}"
        )


if __name__ == "__main__":
    main()
