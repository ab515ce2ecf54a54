"""A whole POST /convert through the real service with a managed TorchServe: where the seconds go.

Starts `python -m service.main` (fresh data folder, free ports, TorchServe backend, model.pt2 on),
posts a --model checkpoint (our training net, random weights and BN statistics) and reports the
client's wall time of the request against the sum of the stages the answer's `timings` list (upload
`save`, read, build, fuse, assemble, validate, store, `archive`, `register`), then how long after the
answer `model.onnx` and `model.pt2` (written in the background) become downloadable. Then, on that
version's artifact folder, the step this release replaced, side by side and interleaved
(--repeats each): zipping a .mar with torch-model-archiver (the previous release's archive step)
vs the model folder TorchServe now registers (`build_model_dir`: hard links + a manifest).

Usage: python benchmarks/convert_request.py [--model B1] [--repeats 3]
Writes benchmarks/results/convert_request_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from _common import MODELS, environment, write_json
from serve_bench import free_port
from supervision_load import start_service, wait_ready

from reparam_core import build_train_model
from reparam_core.deploy import SERVING_FILE, SPEC, WEIGHTS, ServingOptions
from reparam_core.example import randomize_statistics
from service.backends.archive import HANDLER, build_model_dir


def old_mar(artifacts: Path, store: Path) -> Path:
    """The previous release's archive step, as it ran: torch-model-archiver zipping a .mar."""
    options = store / SERVING_FILE
    options.write_text(ServingOptions().model_dump_json())
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    command = [str(archiver), "--model-name", "bench-v1", "--version", "1", "--handler", str(HANDLER)]
    extra = f"{artifacts / SPEC},{options}"
    command += ["--serialized-file", str(artifacts / WEIGHTS), "--extra-files", extra]
    subprocess.run([*command, "--export-path", str(store), "--force"], check=True, capture_output=True)
    return store / "bench-v1.mar"


def archive_steps(artifacts: Path, repeats: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"torch_model_archiver_mar": [], "model_folder": []}
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch)
        for _ in range(repeats):
            started = time.perf_counter()
            mar = old_mar(artifacts, store)
            times["torch_model_archiver_mar"].append(time.perf_counter() - started)
            mar.unlink()
            started = time.perf_counter()
            folder = build_model_dir("bench", 1, artifacts, ServingOptions(), store)
            times["model_folder"].append(time.perf_counter() - started)
            shutil.rmtree(folder)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {
        "seconds": times,
        "median_s": medians,
        "speedup": medians["torch_model_archiver_mar"] / medians["model_folder"],
    }


def wait_download(base: str, url: str, timeout: float = 900) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(base + url, timeout=60).status_code
        if status == 200:
            return time.monotonic()
        if status != 503:
            raise RuntimeError(f"{url}: {status}")
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="B1", choices=sorted(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = {**MODELS[args.model][1], "num_classes": 1000}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checkpoint = folder / "checkpoint.pth"
        torch.save(randomize_statistics(build_train_model(spec), seed=0).state_dict(), checkpoint)
        port = free_port()
        process, _ = start_service(folder / "data", port, REPARAM_EXPORT_PROGRAM="true")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base)
            with checkpoint.open("rb") as upload:
                started = time.monotonic()
                answer = httpx.post(
                    f"{base}/convert",
                    files={"checkpoint": (checkpoint.name, upload, "application/octet-stream")},
                    data={"spec": json.dumps(spec), "name": "bench"},
                    timeout=1800,
                )
                answered = time.monotonic()
            answer.raise_for_status()
            body = answer.json()
            after = {
                name: wait_download(base, f"/models/bench/versions/1/artifacts/{name}") - answered
                for name in ("model.onnx", "model.pt2")
            }
            artifacts = folder / "data" / "artifacts" / "sha256" / body["digest"][:2] / body["digest"]
            archive = archive_steps(artifacts, args.repeats)
        finally:
            process.terminate()
            process.wait(timeout=120)
    timings = body["timings"]
    payload = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "environment": environment(),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "model": args.model,
        "checkpoint_mb": round(checkpoint_size_mb(spec), 1),
        "request_wall_s": answered - started,
        "stages_s": timings,
        "stages_sum_s": sum(timings.values()),
        "downloadable_after_answer_s": after,
        "archive_step": archive,
    }
    path = write_json("convert_request_cpu.json", payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "environment"}, indent=2))
    print(f"wrote {path}")


def checkpoint_size_mb(spec: dict[str, Any]) -> float:
    return sum(p.numel() * 4 for p in build_train_model(spec, device="meta").state_dict().values()) / 2**20


if __name__ == "__main__":
    main()
