"""TorchServe memory with the worker policy vs every version warm, and a cold version's first request.

Starts `python -m service.main` with a managed TorchServe (fresh data folder, free ports,
``REPARAM_WORKERS_PER_MODEL`` --workers) and the default policy (``REPARAM_WARM_VERSIONS=
aliased_and_latest``, ``REPARAM_COLD_WORKERS=0``; ``REPARAM_IDLE_UNLOAD_S`` --idle), converts
--versions versions of a small RepVGG (64x64 input) one after the other, waits until only the
latest has workers and measures the memory of the service's process tree below the service
(TorchServe's launcher, JVM and workers): RSS summed, and PSS (shared pages split between the
processes that share them: the fairer sum). Then posts a JPEG photograph to --cold-requests cold
versions, one at a time: the client's latency of each first request (a worker starts) and of the
request right after (warm). Then restarts the service on the same data with
``REPARAM_WARM_VERSIONS=all``: every version registered with its workers; the same measurement
once /readyz answers 200. Should memory run short (MemAvailable under --min-available-gib), that
run stops where it is and reports how many workers it had reached, with the per-worker figure.

Usage: python benchmarks/worker_memory.py [--versions 20] [--workers 1] [--idle 5]
Writes benchmarks/results/worker_memory_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import environment, write_json
from serve_bench import free_port, image
from supervision_load import SPEC, convert_versions, start_service

GIB = 1 << 30


def mem_available() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))


def tree_memory(root: int) -> dict[str, Any]:
    """RSS and PSS of every process below ``root`` (not ``root`` itself), and how many of them are
    TorchServe workers (``model_service_worker``)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    below, stack = [], [pid for pid, parent in parents.items() if parent == root]
    while stack:
        pid = stack.pop()
        below.append(pid)
        stack += [child for child, parent in parents.items() if parent == pid]
    rss = pss = workers = 0
    for pid in below:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = {
            line.split(":")[0]: int(line.split()[1]) * 1024 for line in rollup[1:] if line.endswith("kB")
        }
        rss, pss = rss + fields.get("Rss", 0), pss + fields.get("Pss", 0)
        workers += b"model_service_worker" in command
    return {"processes": len(below), "workers": workers, "rss_gib": rss / GIB, "pss_gib": pss / GIB}


def model_workers(management: str) -> dict[str, int]:
    """TorchServe's ready workers per registered model."""
    models = httpx.get(f"{management}/models", params={"limit": 1000}, timeout=60).json()["models"]
    ready = {}
    for model in models:
        entry = httpx.get(f"{management}/models/{model['modelName']}", timeout=60).json()[0]
        ready[model["modelName"]] = sum(w["status"] == "READY" for w in entry["workers"])
    return ready


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(1.0)


def policy_run(data: Path, args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    port, management_port = free_port(), free_port()
    base, management = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{management_port}"
    server, _ = start_service(
        data,
        port,
        REPARAM_TORCHSERVE_MANAGEMENT_PORT=str(management_port),
        REPARAM_WORKERS_PER_MODEL=str(args.workers),
        REPARAM_IDLE_UNLOAD_S=str(args.idle),
    )
    try:
        wait_until(lambda: _answers(base), 300, "the service")
        started = time.monotonic()
        convert_versions(base, data.parent, args.versions)
        converted_s = time.monotonic() - started
        latest = f"small-v{args.versions}"
        wait_until(
            lambda: {m for m, n in model_workers(management).items() if n} == {latest},
            args.idle * 4 + 120,
            "the older versions to go cold",
        )
        steady = tree_memory(server.pid)
        cold, warm = [], []
        for version in range(1, args.cold_requests + 1):
            for into in (cold, warm):
                begun = time.perf_counter()
                response = httpx.post(
                    f"{base}/predict/small?version={version}",
                    content=body,
                    headers={"Content-Type": "image/jpeg"},
                    timeout=600,
                )
                response.raise_for_status()
                into.append((time.perf_counter() - begun) * 1e3)
        return {
            "versions": args.versions,
            "conversions_s": converted_s,
            "steady": steady,
            "cold_first_request_ms": cold,
            "warm_next_request_ms": warm,
            "cold_first_request_p50_ms": statistics.median(cold),
            "warm_next_request_p50_ms": statistics.median(warm),
            "after_cold_requests": tree_memory(server.pid),
        }
    finally:
        server.terminate()
        server.wait(timeout=120)


def all_warm_run(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    server, _ = start_service(
        data, port, REPARAM_WORKERS_PER_MODEL=str(args.workers), REPARAM_WARM_VERSIONS="all"
    )
    lowest, stopped = mem_available(), None
    try:
        while True:
            lowest = min(lowest, mem_available())
            if lowest < args.min_available_gib * GIB:
                stopped = f"MemAvailable fell under {args.min_available_gib} GiB"
                break
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 1800:
                stopped = "not every version registered within 30 minutes"
                break
            time.sleep(1.0)
        memory = tree_memory(server.pid)
        ready_s = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=120)
    per_worker = memory["pss_gib"] / max(memory["workers"], 1)
    return {
        "versions": args.versions,
        "all_registered_s": ready_s,
        "stopped": stopped,
        "memory": memory,
        "pss_gib_per_worker": per_worker,
        "lowest_mem_available_gib": lowest / GIB,
    }


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="REPARAM_WORKERS_PER_MODEL")
    parser.add_argument("--idle", type=float, default=5.0, help="REPARAM_IDLE_UNLOAD_S")
    parser.add_argument("--cold-requests", type=int, default=5)
    parser.add_argument("--min-available-gib", type=float, default=3.0)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "environment": environment(),
        "load_before": os.getloadavg(),
        "mem_available_gib_before": mem_available() / GIB,
        "spec": SPEC,
        "settings": {"workers_per_model": args.workers, "idle_unload_s": args.idle},
    }
    body = image("JPEG")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        results["policy"] = policy_run(data, args, body)
        results["all_warm"] = all_warm_run(data, args)
    policy, warm = results["policy"]["steady"], results["all_warm"]["memory"]
    results["summary"] = {
        "policy_pss_gib": policy["pss_gib"],
        "all_warm_pss_gib": warm["pss_gib"],
        "all_warm_pss_gib_at_every_version": warm["pss_gib"]
        + results["all_warm"]["pss_gib_per_worker"] * (args.versions * args.workers - warm["workers"]),
        "policy_vs_all_warm_pss": policy["pss_gib"] / warm["pss_gib"],
        "cold_first_request_p50_ms": results["policy"]["cold_first_request_p50_ms"],
        "warm_next_request_p50_ms": results["policy"]["warm_next_request_p50_ms"],
    }
    results["load_after"] = os.getloadavg()
    path = write_json("worker_memory_cpu.json", results)
    print(f"({path.name})")
    print(json.dumps(results["summary"], indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
