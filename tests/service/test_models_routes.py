"""The registry endpoints: list, describe, download, delete."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from safetensors.torch import load

from service.config import Settings
from tests.helpers import SERVICE_SPEC as SPEC
from tests.helpers import convert_form, make_checkpoint


def test_list_describe_download_delete(
    client: TestClient, checkpoint: Path, tmp_path: Path, settings: Settings
) -> None:
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    second = make_checkpoint(tmp_path / "second.pth", seed=1)
    assert client.post("/convert", **convert_form(second)).json()["version"] == 2

    listing = client.get("/models").json()
    assert listing == [{"model": "tiny", "latest": 2, "versions": listing[0]["versions"], "aliases": {}}]
    assert [v["version"] for v in listing[0]["versions"]] == [1, 2]
    assert listing[0]["versions"][0]["serving"]["precision"] == "fp32"  # how each version is served

    detail = client.get("/models/tiny/versions/1").json()
    assert detail["spec"]["labels"] == SPEC["labels"] and detail["report"]["passed"]
    weights = client.get(detail["artifacts"]["model.safetensors"])
    assert weights.status_code == 200 and "stem.conv.weight" in load(weights.content)
    spec = json.loads(client.get(detail["artifacts"]["deploy_spec.json"]).content)
    assert spec["head"]["num_classes"] == 4
    assert (
        client.get("/models/tiny/versions/1/artifacts/model.pt2").status_code == 404
    )  # export disabled here
    assert client.get("/models/tiny/versions/1/artifacts/..%2F..%2Freparam.db").status_code == 404

    assert client.delete("/models/tiny/versions/1").status_code == 204
    assert client.get("/models/tiny/versions/1").status_code == 404
    assert [v["version"] for v in client.get("/models/tiny").json()["versions"]] == [2]
    remaining = {p.name for p in (settings.resolved_artifacts_dir / "sha256").glob("*/*")}
    assert remaining == {client.get("/models/tiny/versions/2").json()["digest"]}  # v1's folder removed
    assert client.delete("/models/tiny/versions/1").status_code == 404
    assert client.get("/models/nothing").status_code == 404


def test_artifacts_shared_by_two_versions_survive_one_delete(client: TestClient, checkpoint: Path) -> None:
    client.post("/convert", **convert_form(checkpoint))
    client.post("/convert", **convert_form(checkpoint, name="copy"))
    assert client.delete("/models/tiny/versions/1").status_code == 204
    link = client.get("/models/copy/versions/1").json()["artifacts"]["model.safetensors"]
    assert client.get(link).status_code == 200


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/convert", "/predict/{name}", "/models", "/jobs/{job_id}", "/metrics", "/readyz"} <= set(
        schema["paths"]
    )
    example = schema["components"]["schemas"]["ConversionResponse"]["examples"][0]
    assert example["model"] == "repvgg-a0" and torch is not None


def test_api_docs_work_offline(client: TestClient) -> None:
    """Swagger UI and ReDoc load their scripts and styles from the service itself, not a CDN."""
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert assets and "://" not in "".join(assets), assets
        assert all(client.get(asset).status_code == 200 for asset in assets)
