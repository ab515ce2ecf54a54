"""Serving options chosen at registration: stored with the version, applied by the backend, checked."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from reparam_core import convert
from reparam_core.deploy import ONNX, ServingOptions, load_artifacts
from reparam_core.deploy.runtimes import onnx_runner
from service.app import create_app
from service.config import Settings
from service.jobs import export_worker
from service.store import MetadataStore
from service.store.artifacts import LocalArtifactStore
from tests.helpers import (
    NATIVE_BF16,
    convert_form,
    model_input,
    png_bytes,
    ready,
    state_of,
    training_probabilities,
    wait_for,
    wait_ready,
)
from tests.helpers import SERVICE_SPEC as SPEC

BF16 = '{"precision": "bf16", "channels_last": false}'


def served_options(client: TestClient, name: str, version: int) -> ServingOptions:
    served = client.app.state.backend.served(name, version)  # type: ignore[attr-defined]
    assert served is not None
    return served.options


@NATIVE_BF16
def test_options_are_part_of_the_version(client: TestClient, checkpoint: Path) -> None:
    plain = client.post("/convert", **convert_form(checkpoint))
    assert plain.status_code == 201 and plain.json()["serving"] == ServingOptions().model_dump(mode="json")
    reduced = client.post("/convert", **convert_form(checkpoint, serving=BF16))
    assert reduced.status_code == 201, reduced.text
    body = reduced.json()
    assert body["version"] == 2 and body["digest"] == plain.json()["digest"]  # same weights, new options
    assert body["serving"]["precision"] == "bf16" and body["serving"]["channels_last"] is False
    check = body["report"]["serving"]
    assert check["equivalence"]["dtype"] == "bfloat16" and check["equivalence"]["passed"]
    assert check["train_same_precision"]["dtype"] == "bfloat16" and "serving" in body["timings"]
    again = client.post("/convert", **convert_form(checkpoint, serving=BF16))
    assert again.status_code == 200 and again.json()["version"] == 2
    assert client.get("/models/tiny/versions/2").json()["serving"]["precision"] == "bf16"
    assert served_options(client, "tiny", 2).precision == "bf16"
    assert served_options(client, "tiny", 1).precision == "fp32"


@NATIVE_BF16
def test_predictions_come_from_the_reduced_precision_net(client: TestClient, checkpoint: Path) -> None:
    assert client.post("/convert", **convert_form(checkpoint, serving=BF16)).status_code == 201
    image = png_bytes()
    response = client.post("/predict/tiny?top_k=4", content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    expected = training_probabilities(model_input(image, SPEC["preprocess"], 3))[0]
    got = torch.zeros(4)
    for item in response.json()["predictions"][0]:
        got[item["index"]] = item["probability"]
    error = (got - expected).abs().max().item()
    assert 1e-6 < error < 5e-2  # bfloat16 rounding: visible, but small


def test_bad_options_are_422_and_nothing_is_stored(client: TestClient, checkpoint: Path) -> None:
    response = client.post("/convert", **convert_form(checkpoint, serving='{"precision": "fp8"}'))
    assert response.status_code == 422 and "serving.precision" in response.json()["detail"]
    unknown = client.post("/convert", **convert_form(checkpoint, serving='{"compiled": true}'))
    assert unknown.status_code == 422 and "serving.compiled: Extra inputs" in unknown.json()["detail"]
    assert client.get("/models").json() == []


@NATIVE_BF16
def test_restart_serves_each_version_with_its_options(settings: Settings, checkpoint: Path) -> None:
    with TestClient(create_app(settings)) as first:
        assert first.post("/convert", **convert_form(checkpoint, serving=BF16)).status_code == 201
    with TestClient(create_app(settings)) as second:
        wait_ready(second)
        assert served_options(second, "tiny", 1).precision == "bf16"


def test_a_database_from_before_serving_options_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE versions (id INTEGER PRIMARY KEY, name VARCHAR(64), version INTEGER, "
            "digest VARCHAR(64), checkpoint_sha256 VARCHAR(64), spec_sha256 VARCHAR(64), spec JSON, "
            "report JSON, timings JSON, created_at DATETIME, UNIQUE (name, version))"
        )
        db.execute(
            "INSERT INTO versions VALUES (1, 'old', 1, ?, 'c', 's', '{}', '{}', '{}', '2026-01-01 00:00:00')",
            ("d" * 64,),
        )
        db.execute(
            "CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY, name VARCHAR(64), status VARCHAR(16), "
            "result JSON, created_at DATETIME, updated_at DATETIME)"
        )
        db.execute(
            "INSERT INTO jobs VALUES ('j', 'old', 'running', NULL, '2026-01-01 00:00:00', "
            "'2026-01-01 00:00:00')"
        )
    store = MetadataStore(f"sqlite:///{path}")
    job = store.get_job("j")
    assert job is not None and job.status == "failed" and job.stage is None and job.stages == {}
    record = store.get_version("old", 1)
    assert record is not None and record.serving == ServingOptions().model_dump(mode="json")
    assert store.find_duplicate("old", "c", "s", record.serving) == record
    assert store.find_duplicate("old", "c", "s", {**record.serving, "precision": "fp16"}) is None


def test_a_version_stored_before_runtimes_is_found_by_an_identical_request(tmp_path: Path) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    before = ServingOptions().model_dump(mode="json")
    del before["runtime"]  # what versions stored before runtimes hold
    store.add_version("old", "d" * 64, "c", "s", {}, {}, {}, before)
    assert store.find_duplicate("old", "c", "s", ServingOptions().model_dump(mode="json")) is not None
    assert store.find_duplicate("old", "c", "s", {**before, "runtime": "openvino"}) is None


def predicted(client: TestClient, image: bytes) -> torch.Tensor:
    response = client.post("/predict/tiny?top_k=4", content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    got = torch.zeros(4)
    for item in response.json()["predictions"][0]:
        got[item["index"]] = item["probability"]
    return got


@pytest.mark.parametrize(
    ("serving", "bound"),
    [
        ('{"runtime": "onnxruntime"}', 1e-5),
        ('{"runtime": "openvino"}', 1e-5),
        pytest.param('{"runtime": "openvino", "precision": "bf16"}', 5e-2, marks=NATIVE_BF16),
    ],
)
def test_each_runtime_converts_checks_and_serves(
    client: TestClient, checkpoint: Path, serving: str, bound: float
) -> None:
    response = client.post("/convert", **convert_form(checkpoint, serving=serving))
    assert response.status_code == 201, response.text
    body = response.json()
    options = ServingOptions.model_validate_json(serving)
    assert body["serving"]["runtime"] == options.runtime and body["serving"]["precision"] == options.precision
    check = body["report"]["serving"]
    assert check["device"] == "cpu" and check["equivalence"]["passed"]
    assert body["report"]["onnx"]["passed"] and body["report"]["cpu"]["avx2"] is not None
    assert served_options(client, "tiny", 1) == options
    image = png_bytes()
    expected = training_probabilities(model_input(image, SPEC["preprocess"], 3))[0]
    assert (predicted(client, image) - expected).abs().max().item() < bound
    onnx = client.get("/models/tiny/versions/1/artifacts/model.onnx")
    assert onnx.status_code == 200 and len(onnx.content) > 1000


def test_model_onnx_is_an_artifact_of_every_version(client: TestClient, checkpoint: Path) -> None:
    """Runtime torch: written after registration, checked against the stored net in float64."""
    body = client.post("/convert", **convert_form(checkpoint)).json()
    assert body["report"]["onnx"] is None and "onnx" not in body["timings"]  # not on the request path
    url = "/models/tiny/versions/1/artifacts/model.onnx"
    onnx = wait_for(lambda: ready(client, url, waiting=(503,)))
    assert onnx.status_code == 200, onnx.text
    assert "model.onnx" in client.get("/models/tiny/versions/1").json()["artifacts"]
    net, spec = load_artifacts(client.app.state.artifacts.local_path(body["digest"]))  # type: ignore[attr-defined]
    x = torch.randn(2, *spec.sample_shape())
    ours = onnx_runner("onnxruntime", onnx.content, "fp32")(x)
    assert torch.allclose(ours, net(x), rtol=1e-4, atol=1e-5)


def test_a_model_onnx_that_differs_from_the_stored_net_is_not_written(
    client: TestClient, checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The export worker's check, run in this process so that the export can be bent; the
    service answers its failures on download (test_models_routes)."""
    real = export_worker.export_onnx

    def bent(net: torch.nn.Module, shape: tuple[int, int, int]) -> bytes:
        wrong = copy.deepcopy(net)
        with torch.no_grad():
            list(wrong.parameters())[-1].add_(0.5)
        return real(wrong, shape)

    body = client.post("/convert", **convert_form(checkpoint)).json()
    folder = client.app.state.artifacts.local_path(body["digest"])  # type: ignore[attr-defined]
    out = tmp_path / ONNX
    export_worker.write_artifact(folder, ONNX, out)  # unbent: written
    assert out.stat().st_size > 0
    monkeypatch.setattr(export_worker, "export_onnx", bent)
    with pytest.raises(ValueError, match="differs from the stored net: max relative error"):
        export_worker.write_artifact(folder, ONNX, tmp_path / "bent.onnx")
    assert not (tmp_path / "bent.onnx").exists()


def test_a_runtime_that_does_not_serve_a_precision_is_422(client: TestClient, checkpoint: Path) -> None:
    response = client.post(
        "/convert", **convert_form(checkpoint, serving='{"runtime": "onnxruntime", "precision": "bf16"}')
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "runtime onnxruntime does not serve precision bf16" in detail and "openvino: fp32|bf16" in detail
    assert client.get("/models").json() == []


def test_system_reports_the_cpu_and_the_runtimes(client: TestClient) -> None:
    body = client.get("/system").json()
    cpu = body["cpu"]
    assert set(cpu) >= {"model", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "torch_capability"}
    assert body["bf16"] == (cpu["avx512_bf16"] or cpu["amx_bf16"]) and body["device"] == "cpu"
    runtimes = body["runtimes"]
    assert runtimes["torch"]["version"] == torch.__version__ and runtimes["onnxruntime"]["precisions"] == [
        "fp32",
        "int8",
    ]
    assert runtimes["openvino"]["precisions"] == (["fp32", "bf16"] if body["bf16"] else ["fp32"])
    assert client.get("/").json()["links"]["system"] == "/system"


def test_a_folder_stored_before_model_onnx_gets_it_from_the_next_conversion(tmp_path: Path) -> None:
    """Identical weights share one artifact folder: one written before model.onnx existed gains it."""
    state = state_of(SPEC)
    store = LocalArtifactStore(tmp_path / "artifacts")
    digest = store.put(convert(SPEC, state), export=False)
    assert not (store.local_path(digest) / ONNX).exists()
    with_onnx = convert(SPEC, state, onnx=True)
    assert store.put(with_onnx, export=False) == digest
    assert (store.local_path(digest) / ONNX).read_bytes() == with_onnx.onnx
    assert [p.name for p in (tmp_path / "artifacts" / "tmp").iterdir()] == []
