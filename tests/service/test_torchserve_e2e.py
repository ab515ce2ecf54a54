"""End to end against a real TorchServe (Java 17 in CI): convert, predict (GET and POST), metrics, restart."""

from __future__ import annotations

import base64
import concurrent.futures
import socket
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from reparam_core.arch import build_train_model
from service.app import create_app
from service.backends.torchserve_process import find_java_home, torchserve_executable
from service.config import Settings
from tests.helpers import SERVICE_SPEC as TINY
from tests.helpers import convert_form, model_input, png_bytes, randomize_, wait_for, wait_ready

pytestmark = pytest.mark.skipif(
    find_java_home() is None or torchserve_executable() is None,
    reason="needs Java and the torchserve package",
)
SPEC = {"family": "repvgg", "variant": "A0", "num_classes": 10, "labels": [f"class-{i}" for i in range(10)]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        backend="torchserve",
        device="cpu",
        export_program=False,
        torchserve_inference_port=free_port(),
        torchserve_management_port=free_port(),
        torchserve_metrics_port=free_port(),
        batch_size=4,
        max_batch_delay_ms=20,
    )


def check_reduced_precision_worker(client: TestClient, tmp_path: Path) -> None:
    """A version registered with bf16 serving options is run in bfloat16 by its TorchServe worker."""
    model = randomize_(build_train_model(TINY), seed=3).eval()
    checkpoint = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    form = convert_form(checkpoint, name="tiny16", spec=TINY, serving='{"precision": "bf16"}')
    assert client.post("/convert", **form).status_code == 201
    image = png_bytes(40, 40, seed=6)
    answer = client.post("/predict/tiny16?top_k=4", content=image, headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    with torch.no_grad():
        x = model_input(image, TINY["preprocess"], 3).double()
        expected = torch.softmax(model.double()(x), dim=1)[0]
    error = max(abs(p["probability"] - float(expected[p["index"]])) for p in answer.json()["predictions"][0])
    assert 1e-6 < error < 5e-2  # bfloat16 rounding: visible, but small


def check_onnx_runtime_workers(client: TestClient, tmp_path: Path) -> None:
    """Versions served by ONNX Runtime and OpenVINO: their model folder carries model.onnx, their
    worker runs it."""
    model = randomize_(build_train_model(TINY), seed=5).eval()
    checkpoint = tmp_path / "tiny-onnx.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    image = png_bytes(40, 40, seed=7)
    with torch.no_grad():
        x = model_input(image, TINY["preprocess"], 3).double()
        expected = torch.softmax(model.double()(x), dim=1)[0]
    for runtime in ("onnxruntime", "openvino"):
        form = convert_form(
            checkpoint, name=f"tiny-{runtime}", spec=TINY, serving=f'{{"runtime": "{runtime}"}}'
        )
        converted = client.post("/convert", **form)
        assert converted.status_code == 201, converted.text
        assert converted.json()["report"]["serving"]["device"] == "cpu"
        answer = client.post(
            f"/predict/tiny-{runtime}?top_k=4", content=image, headers={"Content-Type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
        top = answer.json()["predictions"][0]
        assert max(abs(p["probability"] - float(expected[p["index"]])) for p in top) < 1e-5, runtime


def test_convert_serve_predict_restart(settings: Settings, tmp_path: Path) -> None:
    model = randomize_(build_train_model(SPEC), seed=11).eval()
    checkpoint = tmp_path / "a0.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    image = png_bytes(300, 260, seed=4)
    small = png_bytes(64, 48, seed=5)  # GET carries the image in the URL: keep it small

    def check(body: dict, sent: bytes) -> None:
        # Reference: the training net in float64. The served fp32 deploy net and the fp32 training net
        # both sit within fp32 rounding of it (a random net amplifies rounding to ~1e-5 in probabilities).
        with torch.no_grad():
            x = model_input(sent, {"resize": 256, "crop": 224}, 3).double()
            expected = torch.softmax(model.double()(x), dim=1)[0]
            fp32_error = (torch.softmax(model.float()(x.float()), dim=1)[0] - expected).abs().max().item()
        top = body["predictions"][0]
        assert top[0]["index"] == int(expected.argmax()) and top[0]["label"] == f"class-{top[0]['index']}"
        for item in top:
            assert item["probability"] == pytest.approx(
                float(expected[item["index"]]), abs=max(1e-5, 10 * fp32_error)
            )

    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["backend"] == "torchserve"
        converted = client.post("/convert", **convert_form(checkpoint, name="a0", spec=SPEC))
        assert converted.status_code == 201, converted.text
        posted = client.post("/predict/a0?top_k=5", content=image, headers={"Content-Type": "image/png"})
        assert posted.status_code == 200, posted.text
        check(posted.json(), image)
        encoded = base64.urlsafe_b64encode(small).decode().rstrip("=")
        got = client.get(f"/predict/a0?image={encoded}&top_k=5")
        assert got.status_code == 200
        check(got.json(), small)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent requests meet TorchServe batching
            answers = list(
                pool.map(
                    lambda _: client.post(
                        "/predict/a0", content=image, headers={"Content-Type": "image/png"}
                    ),
                    range(16),
                )
            )
        assert all(a.status_code == 200 for a in answers)
        check(answers[-1].json(), image)
        metrics = client.get("/metrics").text
        assert 'reparam_predict_latency_seconds_count{model="a0",version="1"} 18.0' in metrics
        assert 'reparam_predict_backend_latency_seconds_count{model="a0",version="1"} 18.0' in metrics
        check_reduced_precision_worker(client, tmp_path)
        check_onnx_runtime_workers(client, tmp_path)

    with TestClient(
        create_app(settings)
    ) as restarted:  # a fresh TorchServe: versions re-registered from the store
        assert wait_ready(restarted)["pending"] == 0
        again = restarted.post("/predict/a0", content=image, headers={"Content-Type": "image/png"})
        assert again.status_code == 200
        check(again.json(), image)
        assert restarted.delete("/models/a0/versions/1").status_code == 204
        gone = restarted.post("/predict/a0", content=image, headers={"Content-Type": "image/png"})
        assert gone.status_code == 404


def test_cold_versions_unload_scale_up_on_demand_and_an_alias_warms_one(
    settings: Settings, tmp_path: Path
) -> None:
    """The worker policy against a real TorchServe: the older version goes cold (no worker) once
    idle, its first request starts a worker and is answered, it goes cold again, and an alias
    moved to it loads its worker without a request and keeps it."""
    settings = settings.model_copy(
        update={"workers_per_model": 1, "idle_unload_s": 4.0, "supervise_interval_s": 0.5}
    )
    image = png_bytes(40, 40, seed=6)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for seed in (1, 2):
            model = randomize_(build_train_model(TINY), seed=seed).eval()
            torch.save({"model": model.state_dict()}, tmp_path / f"{seed}.pth")
            form = convert_form(tmp_path / f"{seed}.pth", name="tiny", spec=TINY)
            assert client.post("/convert", **form).status_code == 201
        management = client.app.state.backend.management_url  # type: ignore[attr-defined]

        def workers(version: int) -> tuple[int, int] | None:
            """minWorkers and ready workers (None while TorchServe's description waits on a scale-up)."""
            try:
                entry = httpx.get(f"{management}/models/tiny-v{version}", timeout=10).json()[0]
            except httpx.TimeoutException:
                return None
            return entry["minWorkers"], sum(w["status"] == "READY" for w in entry["workers"])

        wait_for(lambda: workers(1) == (0, 0) or None, timeout=60)  # idle and no longer the latest: unloaded
        assert workers(2) == (1, 1) and client.get("/readyz").status_code == 200
        answer = client.post("/predict/tiny?version=1", content=image, headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert workers(1) == (1, 1)
        wait_for(lambda: workers(1) == (0, 0) or None, timeout=60)  # idle again
        moved = client.put("/models/tiny/aliases/production", json={"version": 1})
        assert moved.status_code == 200
        wait_for(lambda: workers(1) == (1, 1) or None, timeout=120)  # loaded without a request
        time.sleep(3 * settings.idle_unload_s)
        assert workers(1) == (1, 1) and workers(2) == (1, 1)  # aliased and latest: both stay warm
