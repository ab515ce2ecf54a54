"""/predict under load while TorchServe is killed: what clients see, and how fast the service recovers.

Starts `python -m service.main` with a managed TorchServe (fresh data folder, free ports, default
settings otherwise), converts --versions versions of a small RepVGG (64x64 input) and sends
--requests POST /predict from --concurrency clients, spread over the versions (a real photograph as
JPEG: scikit-image's "chelsea"). Once half the requests have been answered, TorchServe's process
group is killed with SIGKILL (the pid file the service keeps names it). Reported: status counts,
overall and during the outage (kill -> first 200 again); 5xx other than 503 (should be 0); the
recovery time from the kill to the first 200 and to /readyz 200 (every version registered again);
lost registrations (stored versions TorchServe does not list at the end); client latency. Then the
service is restarted twice on the same data, registering the stored versions one at a time and two
at a time: seconds to the port answering and to every version registered.

Usage: python benchmarks/supervision_load.py [--requests 10000] [--concurrency 32] [--versions 3]
Writes benchmarks/results/supervision_load_cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import torch
from _common import environment, write_json
from serve_bench import free_port, image, percentiles

from reparam_core.example import SPEC

ROOT = Path(__file__).resolve().parents[1]


def start_service(data: Path, port: int, **extra: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # the service and TorchServe's workers run this checkout
        "REPARAM_DATA_DIR": str(data),
        "REPARAM_PORT": str(port),
        "REPARAM_BACKEND": "torchserve",
        "REPARAM_EXPORT_PROGRAM": "false",
        "REPARAM_DEVICE": "cpu",
        "REPARAM_TORCHSERVE_INFERENCE_PORT": str(free_port()),
        "REPARAM_TORCHSERVE_MANAGEMENT_PORT": str(free_port()),
        "REPARAM_TORCHSERVE_METRICS_PORT": str(free_port()),
        **extra,
    }
    env.pop("REPARAM_API_TOKEN", None)
    log = (data.parent / "service.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.main"], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    return process, env


def wait_ready(base: str, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base} did not become ready within {timeout:.0f} s")


def convert_versions(base: str, folder: Path, count: int) -> None:
    from reparam_core import build_train_model
    from reparam_core.example import randomize_statistics

    for seed in range(count):
        checkpoint = folder / f"v{seed}.pth"
        torch.save(randomize_statistics(build_train_model(SPEC), seed=seed).state_dict(), checkpoint)
        files = {"checkpoint": (checkpoint.name, checkpoint.read_bytes(), "application/octet-stream")}
        data = {"spec": json.dumps(SPEC), "name": "small"}
        httpx.post(f"{base}/convert", files=files, data=data, timeout=600).raise_for_status()


async def load(base: str, body: bytes, args: argparse.Namespace, pid_file: Path) -> dict[str, Any]:
    answers: list[tuple[float, float, int]] = []  # start, end, status
    events: dict[str, float] = {}
    left = list(range(args.requests))
    async with httpx.AsyncClient(
        timeout=120, limits=httpx.Limits(max_connections=args.concurrency)
    ) as client:

        async def one_client() -> None:
            while left:
                version = left.pop() % args.versions + 1
                started = time.monotonic()
                try:
                    response = await client.post(
                        f"{base}/predict/small?version={version}",
                        content=body,
                        headers={"Content-Type": "image/jpeg"},
                    )
                    status = response.status_code
                except httpx.TransportError as exc:  # the service did not answer at all: counted as 0
                    print(f"no answer after {time.monotonic() - started:.1f} s: {exc!r}", file=sys.stderr)
                    status = 0
                answers.append((started, time.monotonic(), status))
                if len(answers) == args.requests // 2:
                    events["killed"] = time.monotonic()
                    os.killpg(json.loads(pid_file.read_text())["pgid"], signal.SIGKILL)

        async def watch_readiness() -> None:
            while "killed" not in events:
                await asyncio.sleep(0.05)
            while (await client.get(f"{base}/readyz")).status_code == 200:  # until the supervisor sees it
                await asyncio.sleep(0.05)
            events["noticed"] = time.monotonic()
            while (await client.get(f"{base}/readyz")).status_code != 200:
                await asyncio.sleep(0.1)
            events["all_registered"] = time.monotonic()

        started = time.monotonic()
        watcher = asyncio.ensure_future(watch_readiness())
        await asyncio.gather(*(one_client() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        await asyncio.wait_for(watcher, timeout=300)
    killed = events["killed"]
    recovered = min(end for start, end, status in answers if start > killed and status == 200)
    during = [status for _, end, status in answers if killed <= end <= recovered]
    statuses = [status for _, _, status in answers]
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "elapsed_s": elapsed,
        "statuses": dict(Counter(statuses)),
        "statuses_during_outage": dict(Counter(during)),
        "no_answer": statuses.count(0),
        "5xx_other_than_503": sum(1 for s in statuses if s >= 500 and s != 503),
        "5xx_other_than_503_during_outage": sum(1 for s in during if s >= 500 and s != 503),
        "503": statuses.count(503),
        "recovery_s": {
            "readyz_503": events["noticed"] - killed,
            "first_200": recovered - killed,
            "all_versions_registered": events["all_registered"] - killed,
        },
        "latency_200": percentiles([end - start for start, end, status in answers if status == 200]),
    }


def startup(data: Path, versions: int) -> list[dict[str, float]]:
    """A restart with the stored versions: seconds to /healthz 200 (port open) and to /readyz 200
    (every version registered), registering them one at a time and then two at a time."""
    rows = []
    for concurrency in (1, 2):
        port = free_port()
        started = time.monotonic()
        server, _ = start_service(data, port, REPARAM_REGISTRATION_CONCURRENCY=str(concurrency))
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            port_open = time.monotonic() - started
            ready = wait_ready(f"http://127.0.0.1:{port}") - started
        finally:
            server.terminate()
            server.wait(timeout=60)
        rows.append({"registration_concurrency": concurrency, "port_open_s": port_open, "ready_s": ready})
    return rows


def lost_registrations(management: str, versions: int) -> list[str]:
    listed = {
        m["modelName"] for m in httpx.get(f"{management}/models?limit=100", timeout=10).json()["models"]
    }
    return [f"small-v{v}" for v in range(1, versions + 1) if f"small-v{v}" not in listed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--versions", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    body = image("JPEG")
    with tempfile.TemporaryDirectory() as tmp:
        data, port = Path(tmp) / "data", free_port()
        server, env = start_service(data, port)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base)
            convert_versions(base, Path(tmp), args.versions)
            results = asyncio.run(load(base, body, args, data / "torchserve" / "torchserve.pid"))
            management = f"http://127.0.0.1:{env['REPARAM_TORCHSERVE_MANAGEMENT_PORT']}"
            results["lost_registrations"] = lost_registrations(management, args.versions)
            results["readyz_after"] = httpx.get(f"{base}/readyz", timeout=10).json()
            log = (Path(tmp) / "service.log").read_text().splitlines()
            results["supervisor_log"] = [line for line in log if "reparam.supervisor" in line]
        finally:
            server.terminate()
            server.wait(timeout=60)
        results["startup"] = startup(data, args.versions)
    payload = {"environment": environment(), "spec": SPEC, "versions": args.versions, **results}
    path = write_json("supervision_load_cpu.json", payload)
    recovery = results["recovery_s"]
    elapsed = results["elapsed_s"]
    print(f"({path.name}) {args.requests} requests at {args.concurrency} clients in {elapsed:.1f} s")
    print(f"statuses {results['statuses']}; during the outage {results['statuses_during_outage']}")
    print(
        f"5xx other than 503: {results['5xx_other_than_503']}; lost registrations: "
        f"{len(results['lost_registrations'])}; recovery: first 200 after {recovery['first_200']:.1f} s, "
        f"all {args.versions} versions registered after {recovery['all_versions_registered']:.1f} s"
    )
    for row in results["startup"]:
        at_a_time, port_open, ready = row["registration_concurrency"], row["port_open_s"], row["ready_s"]
        print(f"restart, {at_a_time} at a time: port open {port_open:.1f} s, all registered {ready:.1f} s")


if __name__ == "__main__":
    main()
