"""/predict overhead (total minus backend time) for a 512x512 JPEG: before vs now, side by side.

Live services: three `python -m service.main` (uvicorn on loopback, in-process backend, fresh data
folders), each serving the same RepVGG-A0 (random weights, realistic BN statistics):
  before - the code of --before (default: the commit before the decode changes; `git archive`d)
  exact  - this checkout, default settings (torchvision-exact pixels)
  draft  - this checkout with REPARAM_JPEG_DRAFT=true (libjpeg decodes at 1/2 scale)
One client POSTs scikit-image's 512x512 "astronaut" as JPEG (quality 90) --requests times to each,
round-robin (interleaved: the machine's drift hits all three alike), one request at a time.
Reported per service from its Server-Timing header: overhead = total - backend (p50, p95), the
part before the backend (body, version lookup, decode, resize, crop), and the client's latency
minus the backend time. Whether the exact service answers exactly what the before one does.

In this process, interleaved, medians: the decode function alone (before's ``image_to_pixels``,
this checkout's exact and draft) on the same JPEG; and what the draft decode costs in accuracy on
--images JPEGs at least 512 pixels on the shorter side (scikit-image's 512x512 photos and random
crops of its larger ones): max and mean absolute pixel difference to the exact pixels, and how
often the A0's top-1 class agrees (random weights: a proxy, not ImageNet accuracy).

Usage: python benchmarks/predict_overhead.py [--requests 300] [--images 40] [--before REV]
Writes benchmarks/results/predict_overhead_cpu.json.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from _common import environment, write_json
from PIL import Image
from serve_bench import free_port, server_timing

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "99f370c"  # the last commit before the decode changes of issue #15
SPEC = {"family": "repvgg", "variant": "A0", "num_classes": 1000}
PREPROCESS = {"resize": 256, "crop": 224}


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def accuracy_set(count: int) -> list[bytes]:
    """Photographs at least 512 pixels on the shorter side: scikit-image's 512x512 ones, then
    random square and oblong crops of its two larger ones (retina 1411x1411, Hubble 1000x872)."""
    from skimage import data

    square = [data.astronaut(), data.immunohistochemistry(), data.camera(), data.moon(), data.brick()]
    large = [data.retina(), data.hubble_deep_field()]
    rng = np.random.default_rng(0)
    images = [jpeg(p) for p in square]
    while len(images) < count:
        source = large[len(images) % 2]
        height = int(rng.integers(512, source.shape[0] + 1))
        width = int(rng.integers(512, source.shape[1] + 1))
        top = int(rng.integers(0, source.shape[0] - height + 1))
        left = int(rng.integers(0, source.shape[1] - width + 1))
        images.append(jpeg(source[top : top + height, left : left + width]))
    return images[:count]


def import_before(tree: Path) -> types.ModuleType:
    """The before tree's ``service.images``, imported as ``before_service.images``."""
    package = types.ModuleType("before_service")
    package.__path__ = [str(tree / "service")]
    sys.modules["before_service"] = package
    return importlib.import_module("before_service.images")


def extract(rev: str, folder: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def decode_alone(before: types.ModuleType, body: bytes, rounds: int) -> dict[str, Any]:
    from service.images import image_to_pixels

    ways = {
        "before": lambda: before.image_to_pixels(body, PREPROCESS, 3),
        "exact": lambda: image_to_pixels(body, PREPROCESS, 3),
        "draft": lambda: image_to_pixels(body, PREPROCESS, 3, draft=True),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return {
        "median_ms": medians,
        "exact_vs_before": medians["exact"] / medians["before"],
        "draft_vs_before": medians["draft"] / medians["before"],
        "exact_equals_before": bool(torch.equal(ways["exact"](), ways["before"]())),
    }


def draft_accuracy(images: list[bytes], checkpoint: Path) -> dict[str, Any]:
    from reparam_core import ServingModel, ServingOptions, convert
    from reparam_core.deploy import PixelNormaliser
    from service.images import image_to_pixels

    deploy = convert(SPEC, checkpoint, validate=False).deploy_model
    model = ServingModel(deploy, ServingOptions(), "cpu", PixelNormaliser({}, 3))
    exact = torch.cat([image_to_pixels(data, PREPROCESS, 3) for data in images])
    draft = torch.cat([image_to_pixels(data, PREPROCESS, 3, draft=True) for data in images])
    difference = (exact.int() - draft.int()).abs()
    top_exact, top_draft = model.logits(exact).argmax(1), model.logits(draft).argmax(1)
    per_image = difference.flatten(1)
    return {
        "images": len(images),
        "max_abs_pixel_difference": int(difference.max()),
        "mean_abs_pixel_difference": float(difference.float().mean()),
        "p99_abs_pixel_difference": float(torch.quantile(per_image.float()[:, ::97].flatten(), 0.99)),
        "top1_agreement": float((top_exact == top_draft).float().mean()),
        "note": "random-weight RepVGG-A0 (realistic BN statistics): a proxy, not ImageNet accuracy",
    }


def start(tree: Path, data: Path, port: int, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "REPARAM_DATA_DIR": str(data),
        "REPARAM_BACKEND": "inprocess",
        "REPARAM_PORT": str(port),
        "REPARAM_EXPORT_PROGRAM": "false",
        "REPARAM_DEVICE": "cpu",
        **extra,
    }
    env.pop("REPARAM_API_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "service.main"],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base} did not become ready")


def live(
    trees: dict[str, tuple[Path, dict[str, str]]], checkpoint: Path, body: bytes, requests: int, folder: Path
) -> dict[str, Any]:
    servers, bases = {}, {}
    try:
        for name, (tree, extra) in trees.items():
            port = free_port()
            servers[name] = start(tree, folder / name, port, **extra)
            bases[name] = f"http://127.0.0.1:{port}"
        samples: dict[str, dict[str, list[float]]] = {}
        first: dict[str, Any] = {}
        with httpx.Client(timeout=120) as client:
            for name, base in bases.items():
                wait_ready(base)
                with checkpoint.open("rb") as handle:
                    files = {"checkpoint": ("a0.pth", handle)}
                    form = {"spec": json.dumps(SPEC), "name": "a0"}
                    client.post(f"{base}/convert", files=files, data=form, timeout=600).raise_for_status()
                samples[name] = {"overhead": [], "decode": [], "total": [], "client_minus_backend": []}
            headers = {"Content-Type": "image/jpeg"}
            for round_ in range(requests + 20):  # the first 20 rounds warm up
                for name, base in bases.items():
                    started = time.perf_counter()
                    response = client.post(f"{base}/predict/a0", content=body, headers=headers)
                    elapsed = (time.perf_counter() - started) * 1e3
                    response.raise_for_status()
                    first.setdefault(name, response.json()["predictions"])
                    if round_ < 20:
                        continue
                    timing = server_timing(response.headers["Server-Timing"])
                    row = samples[name]
                    row["overhead"].append(timing["total"] - timing["backend"])
                    row["decode"].append(timing["decode"])
                    row["total"].append(timing["total"])
                    row["client_minus_backend"].append(elapsed - timing["backend"])
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.wait(timeout=60)
    rows = {}
    for name, row in samples.items():
        ordered = sorted(row["overhead"])
        rows[name] = {
            "overhead_p50_ms": statistics.median(ordered),
            "overhead_p95_ms": ordered[int(0.95 * len(ordered))],
            "decode_p50_ms": statistics.median(row["decode"]),
            "total_p50_ms": statistics.median(row["total"]),
            "client_minus_backend_p50_ms": statistics.median(row["client_minus_backend"]),
        }
    for name in rows:
        rows[name]["overhead_vs_before"] = rows[name]["overhead_p50_ms"] / rows["before"]["overhead_p50_ms"]
    rows["exact"]["answers_equal_before"] = first["exact"] == first["before"]
    return {"requests_each": requests, "services": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=300, help="decode-alone rounds")
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' code")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from skimage import data

    from reparam_core import build_train_model
    from reparam_core.example import randomize_statistics

    body = jpeg(data.astronaut())
    results: dict[str, Any] = {
        "environment": environment(),
        "load": os.getloadavg(),
        "image": {"format": "JPEG", "quality": 90, "bytes": len(body), "source": "skimage astronaut 512x512"},
        "preprocess": PREPROCESS,
        "before": args.before,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before_tree = extract(args.before, folder / "before-tree")
        checkpoint = folder / "a0.pth"
        torch.save(randomize_statistics(build_train_model(SPEC)).eval().state_dict(), checkpoint)
        results["decode_alone"] = decode_alone(import_before(before_tree), body, args.rounds)
        results["draft_accuracy"] = draft_accuracy(accuracy_set(args.images), checkpoint)
        trees = {
            "before": (before_tree, {}),
            "exact": (ROOT, {}),
            "draft": (ROOT, {"REPARAM_JPEG_DRAFT": "true"}),
        }
        results["live"] = live(trees, checkpoint, body, args.requests, folder)
    results["load_after"] = os.getloadavg()
    path = write_json("predict_overhead_cpu.json", results)
    print(f"({path.name})")
    print(json.dumps({k: results[k] for k in ("decode_alone", "draft_accuracy", "live")}, indent=1))


if __name__ == "__main__":
    main()
