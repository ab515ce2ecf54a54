"""One JSON of a ``gpu.sh`` run: each stage's status and its benchmark's JSON, plus the headline figures.

Usage: python benchmarks/gpu_summary.py --stages STAGES.tsv
(tab-separated lines: name, status, exit code, seconds, reason)
Writes benchmarks/results/gpu_bench.json.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from _common import RESULTS, environment, write_json

RESULT_FILES = {
    "convert": "convert_bench_cuda.json",
    "inference": "inference_bench_cuda.json",
    "serving": "serve_bench_cuda_jpeg.json",
}


def read_stages(path: Path) -> list[dict[str, Any]]:
    stages = []
    with path.open(newline="") as handle:
        for name, status, code, seconds, reason in csv.reader(handle, delimiter="\t"):
            result = RESULTS / RESULT_FILES[name]
            stages.append(
                {
                    "stage": name,
                    "status": status,
                    "exit_code": int(code) if code else None,
                    "seconds": int(seconds),
                    "reason": reason or None,
                    "result": json.loads(result.read_text())
                    if status != "skipped" and result.exists()
                    else None,
                }
            )
    return stages


def headline(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures the goals are read against, from whatever stages produced JSON."""
    found = {s["stage"]: s["result"] for s in stages if s["result"]}
    figures: dict[str, Any] = {}
    if "convert" in found:
        figures["conversion_median_s"] = {
            r["model"]: r["idle"]["ours"]["median_s"] for r in found["convert"]["results"]
        }
    if "inference" in found:
        figures["matmul_peak_tflops"] = found["inference"]["matmul_peak_tflops"]
        figures["served_tflops"] = {
            f"{r['model']} {r['dtype']} batch {r['batch']}": {
                name: round(value, 1) for name, value in r["tflops"].items() if name.startswith("ours")
            }
            for r in found["inference"]["results"]
        }
    if "serving" in found:
        figures["torchserve_latency_ms"] = {
            f"{r['concurrency']} clients": {
                "p50": r["p50_ms"],
                "p99": r["p99_ms"],
                "req_s": r["throughput_rps"],
            }
            for r in found["serving"]["backends"].get("torchserve", [])
        }
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="parse the arguments, print them, run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"gpu_summary: {vars(args)}")
        return
    if args.stages is None:
        parser.error("--stages is required")
    stages = read_stages(args.stages)
    path = write_json(
        "gpu_bench.json", {"environment": environment(), "stages": stages, "headline": headline(stages)}
    )
    for s in stages:
        print(f"{s['stage']:10} {s['status']:8} {s['seconds']:4d} s  {s['reason'] or ''}")
    print(f"({path})")


if __name__ == "__main__":
    main()
