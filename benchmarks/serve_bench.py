"""/predict latency and throughput through TorchServe vs the in-process backend, plus the model alone.

Starts `reparam serve` as a subprocess per backend (fresh data folder, free ports), converts a
RepVGG-A0 checkpoint (random weights, realistic BN statistics), then sends a real photograph
(scikit-image's 451x300 "chelsea", as JPEG or PNG; 224x224 after preprocessing) from 1, 8 and 32
concurrent clients. Reported: client-side latency p50/p95/p99 and throughput; the service's own
Server-Timing split (overhead = total minus backend, as the service measures it); the client's
latency minus the backend part (adds HTTP parsing and the client); CPU milliseconds per request
of the client, the service process and TorchServe (JVM + workers). The baseline ("model alone")
calls the deploy net prepared with the default serving options directly, in this process, at
batch 1, 8 and 32, right before each backend's run (this machine's speed drifts over minutes);
the summary divides each backend's throughput at the highest concurrency by that run's best
batched model throughput, and by its throughput at the server's batch size (REPARAM_BATCH_SIZE).

Usage: python benchmarks/serve_bench.py [--requests 200] [--concurrency 1 8 32]
                                        [--backends torchserve inprocess] [--image jpeg|png]
                                        [--device cpu|cuda] [--dry-run]
Writes benchmarks/results/serve_bench_<device>_<image>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from _common import environment, write_json
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"family": "repvgg", "variant": "A0", "num_classes": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def image(fmt: str) -> bytes:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": pick(0.5) * 1e3, "p95_ms": pick(0.95) * 1e3, "p99_ms": pick(0.99) * 1e3}


def cpu_seconds(root: int) -> dict[str, float]:
    """CPU time (user + system) of the service process and, apart, of all its descendants
    (TorchServe's launcher, JVM and workers), from /proc; empty where there is no /proc."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    if root not in stats:
        return {}
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    below, stack = 0.0, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        below += stats[pid][1]
        stack += children.get(pid, [])
    return {"service": stats[root][1], "descendants": below}


def server_timing(header: str) -> dict[str, float]:
    parts = (p.strip().split(";dur=") for p in header.split(","))
    return {name: float(value) for name, value in parts}


async def load(
    url: str, body: bytes, media: str, requests: int, concurrency: int, server: int = 0
) -> dict[str, Any]:
    latencies: list[float] = []
    backend_ms: list[float] = []
    decode_ms: list[float] = []
    overhead_ms: list[float] = []
    outside_ms: list[float] = []
    queue = list(range(requests))
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker() -> None:
            while queue:
                queue.pop()
                start = time.perf_counter()
                response = await client.post(url, content=body, headers={"Content-Type": media})
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                timing = server_timing(response.headers["Server-Timing"])
                backend_ms.append(timing["backend"])
                decode_ms.append(timing["decode"])
                overhead_ms.append(timing["total"] - timing["backend"])
                outside_ms.append(latencies[-1] * 1e3 - timing["backend"])

        cpu_before, client_before = cpu_seconds(server), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu_after, client_after = cpu_seconds(server), time.process_time()
    cpu_ms = {f"{k}_cpu_ms_per_request": (cpu_after[k] - cpu_before[k]) * 1e3 / requests for k in cpu_after}
    return {
        "concurrency": concurrency,
        "requests": requests,
        "throughput_rps": requests / elapsed,
        **percentiles(latencies),
        "server_backend_p50_ms": statistics.median(backend_ms),
        "server_overhead_p50_ms": statistics.median(overhead_ms),
        "server_decode_p50_ms": statistics.median(decode_ms),
        "client_minus_backend_p50_ms": statistics.median(outside_ms),
        "client_cpu_ms_per_request": (client_after - client_before) * 1e3 / requests,
        **cpu_ms,
    }


def start_server(backend: str, data: Path, port: int, device: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REPARAM_DATA_DIR": str(data),
        "REPARAM_BACKEND": backend,
        "REPARAM_PORT": str(port),
        "REPARAM_EXPORT_PROGRAM": "false",
        "REPARAM_DEVICE": device,
        "REPARAM_TORCHSERVE_INFERENCE_PORT": str(free_port()),
        "REPARAM_TORCHSERVE_MANAGEMENT_PORT": str(free_port()),
        "REPARAM_TORCHSERVE_METRICS_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.main"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{backend} service did not become ready")


def model_alone(checkpoint: Path, batch_sizes: list[int], repeats: int, device: str) -> list[dict[str, Any]]:
    from reparam_core import ServingModel, ServingOptions, convert

    model = ServingModel(convert(SPEC, checkpoint, validate=False).deploy_model, ServingOptions(), device)
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 224, 224)
        model.probabilities(x)
        times = []
        for _ in range(repeats):  # a CPU batch in, as the service hands it over
            start = time.perf_counter()
            model.probabilities(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "batch": batch,
                "p50_ms": statistics.median(times) * 1e3,
                "images_per_s": batch / statistics.median(times),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--backends", nargs="+", default=["torchserve", "inprocess"])
    parser.add_argument("--image", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the service serves")
    parser.add_argument("--dry-run", action="store_true", help="parse the arguments, print them, run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"serve_bench: {vars(args)}")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    sys.path.insert(0, str(ROOT))
    from reparam_core import build_train_model
    from reparam_core.example import randomize_statistics as randomize_

    fmt = args.image.upper()
    body, media = image(fmt), f"image/{args.image}"
    results: dict[str, Any] = {
        "environment": environment(),
        "device": args.device,
        "spec": SPEC,
        "image": {"format": fmt, "bytes": len(body), "source": "skimage.data.chelsea() 451x300"},
        "backends": {},
        "model_alone": {},
    }
    batch_size = int(os.environ.get("REPARAM_BATCH_SIZE", "8"))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "a0.pth"
        torch.save(randomize_(build_train_model(SPEC)).eval().state_dict(), checkpoint)
        for backend in args.backends:
            results["model_alone"][backend] = model_alone(
                checkpoint, sorted({1, batch_size, 32}), 20, args.device
            )
            port = free_port()
            server = start_server(backend, Path(tmp) / backend, port, args.device)
            try:
                base = f"http://127.0.0.1:{port}"
                with checkpoint.open("rb") as handle:
                    files = {"checkpoint": ("a0.pth", handle)}
                    response = httpx.post(
                        f"{base}/convert",
                        files=files,
                        data={"spec": json.dumps(SPEC), "name": "a0"},
                        timeout=600,
                    )
                response.raise_for_status()
                url = f"{base}/predict/a0"
                asyncio.run(load(url, body, media, 20, 4))  # warm-up
                rows = [
                    asyncio.run(load(url, body, media, args.requests, c, server.pid))
                    for c in args.concurrency
                ]
                results["backends"][backend] = rows
            finally:
                server.terminate()
                server.wait(timeout=60)
    results["summary"] = {}
    for backend, rows in results["backends"].items():
        alone = {r["batch"]: r["images_per_s"] for r in results["model_alone"][backend]}
        results["summary"][backend] = {
            "overhead_p50_ms_at_1_client": rows[0]["server_overhead_p50_ms"],
            "decode_p50_ms_at_1_client": rows[0]["server_decode_p50_ms"],
            "throughput_vs_model_alone_best": rows[-1]["throughput_rps"] / max(alone.values()),
            "throughput_vs_model_alone_same_batch": rows[-1]["throughput_rps"] / alone[batch_size],
        }
    path = write_json(f"serve_bench_{args.device}_{args.image}.json", results)
    print(
        f"/predict, RepVGG-A0, {fmt} photo ({len(body)} bytes) -> 224x224, {args.requests} requests per row"
    )
    print(f"({path.name})")
    columns = ("backend", "clients", "p50 ms", "p95 ms", "p99 ms", "req/s", "overhead p50", "client-backend")
    print("{:11} {:>7} {:>8} {:>8} {:>8} {:>7} {:>13} {:>15}".format(*columns))
    for backend, rows in results["backends"].items():
        for r in rows:
            values = (
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["throughput_rps"],
                r["server_overhead_p50_ms"],
                r["client_minus_backend_p50_ms"],
            )
            print(
                "{:11} {:7d} {:8.1f} {:8.1f} {:8.1f} {:7.1f} {:13.2f} {:15.2f}".format(
                    backend, r["concurrency"], *values
                )
            )
    for backend, summary in results["summary"].items():
        alone = ", ".join(
            f"batch {r['batch']} {r['p50_ms']:.1f} ms ({r['images_per_s']:.1f}/s)"
            for r in results["model_alone"][backend]
        )
        print(f"model alone before {backend}: {alone}")
        print(
            f"{backend}: overhead p50 at 1 client {summary['overhead_p50_ms_at_1_client']:.2f} ms "
            f"(of which decode {summary['decode_p50_ms_at_1_client']:.2f} ms); throughput at "
            f"{args.concurrency[-1]} clients = {summary['throughput_vs_model_alone_best']:.0%} of the model "
            f"alone at its best batch, "
            f"{summary['throughput_vs_model_alone_same_batch']:.0%} at batch {batch_size}"
        )


if __name__ == "__main__":
    main()
