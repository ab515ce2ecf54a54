"""Serving options chosen at registration: stored with the version, applied by the backend, checked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import torch
from fastapi.testclient import TestClient

from reparam_core.deploy import ServingOptions
from service.app import create_app
from service.config import Settings
from service.store import MetadataStore
from tests.helpers import SERVICE_SPEC as SPEC
from tests.helpers import convert_form, model_input, png_bytes, training_probabilities, wait_ready

BF16 = '{"precision": "bf16", "channels_last": false}'


def served_options(client: TestClient, name: str, version: int) -> ServingOptions:
    served = client.app.state.backend.served(name, version)  # type: ignore[attr-defined]
    assert served is not None
    return served.options


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
    assert job is not None and job.stage is None and job.stages == {}
    store.set_job_stage("j", "fuse")
    job = store.get_job("j")
    assert job is not None and job.stage == "fuse" and job.stages == {}
    record = store.get_version("old", 1)
    assert record is not None and record.serving == ServingOptions().model_dump(mode="json")
    assert store.find_duplicate("old", "c", "s", record.serving) == record
    assert store.find_duplicate("old", "c", "s", {**record.serving, "precision": "fp16"}) is None
