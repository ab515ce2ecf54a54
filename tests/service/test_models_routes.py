"""The registry endpoints: list, describe, download, delete."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load

from reparam_core.deploy import ONNX, PROGRAM, load_artifacts
from service.config import Settings
from service.jobs import Exports
from tests.helpers import SERVICE_SPEC as SPEC
from tests.helpers import convert_form, make_checkpoint, png_bytes, ready, wait_for

# The export worker held until a file appears: argv = started-marker, release-file, worker arguments.
HOLD = """
import pathlib, runpy, sys, time
started, release = map(pathlib.Path, sys.argv[1:3])
started.touch()
while not release.exists():
    time.sleep(0.05)
sys.argv = ["export_worker", *sys.argv[3:]]
runpy.run_module("service.jobs.export_worker", run_name="__main__")
"""


def hold_export(held: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The export worker of ``held`` files waits, once started, until the second path exists; the
    first one appears when it has started."""
    exporting, release = folder / "exporting", folder / "release"
    command = Exports._command

    def held_command(self: Exports, source: Path, name: str, out: Path) -> list[str]:
        real = command(self, source, name, out)
        return real if name != held else [sys.executable, "-c", HOLD, str(exporting), str(release), *real[3:]]

    monkeypatch.setattr(Exports, "_command", held_command)
    return exporting, release


@pytest.mark.databases
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


@pytest.mark.databases
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


def test_model_pt2_is_exported_after_registration_and_after_a_restart(
    settings: Settings, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversion answers before model.pt2 exists (503 + Retry-After until it does); the program
    then reproduces the stored net; one a stopped process never wrote comes after the next start."""
    from service.app import create_app

    exporting, release = hold_export(PROGRAM, Path(settings.data_dir), monkeypatch)
    settings = settings.model_copy(update={"export_program": True})
    url = "/models/tiny/versions/1/artifacts/model.pt2"
    with TestClient(create_app(settings)) as client:
        converted = client.post("/convert", **convert_form(checkpoint))
        assert converted.status_code == 201 and "export" not in converted.json()["timings"]
        wait_for(lambda: exporting.exists() or None)
        waiting = client.get(url)
        assert waiting.status_code == 503 and waiting.headers["Retry-After"] == "2"
        release.touch()
        program = wait_for(lambda: ready(client, url)).content
        folder = settings.resolved_artifacts_dir / "sha256" / converted.json()["digest"][:2]
        (folder / converted.json()["digest"] / "model.pt2").unlink()  # as if it was never written
    path = Path(settings.data_dir) / "downloaded.pt2"
    path.write_bytes(program)
    net, _ = load_artifacts(folder / converted.json()["digest"])
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(torch.export.load(str(path)).module()(x), net(x), rtol=1e-5, atol=1e-6)
    with TestClient(create_app(settings)) as client:
        assert wait_for(lambda: ready(client, url)).status_code == 200
    assert not list((settings.resolved_artifacts_dir / "tmp").iterdir())  # no staging file left


def test_stopping_the_service_stops_its_export_worker(
    settings: Settings, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.app import create_app

    exporting, _ = hold_export(ONNX, Path(settings.data_dir), monkeypatch)  # never released
    with TestClient(create_app(settings)) as client:
        assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
        wait_for(lambda: exporting.exists() or None)
        child = client.app.state.exports._child  # type: ignore[attr-defined]
        assert child is not None and child.poll() is None
    assert child.poll() is not None  # stopped with the service
    assert not list((settings.resolved_artifacts_dir / "tmp").iterdir())
    assert list((settings.resolved_artifacts_dir / "sha256").rglob(ONNX)) == []  # not half-written


def test_a_failed_export_says_why_and_the_version_still_serves(
    client: TestClient, settings: Settings, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Exports, folder: Path, name: str, out: Path) -> list[str]:
        return [
            sys.executable,
            "-c",
            f"import sys; sys.exit('RuntimeError: {name}: could not trace the net')",
        ]

    monkeypatch.setattr(Exports, "_command", broken)
    client.app.state.settings.export_program = True  # type: ignore[attr-defined]
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    url = "/models/tiny/versions/1/artifacts/model.pt2"
    answer = wait_for(lambda: ready(client, url, waiting=(503,)))
    assert answer.status_code == 404 and "could not trace" in answer.json()["detail"]
    assert (
        client.post("/predict/tiny", content=png_bytes(), headers={"Content-Type": "image/png"}).status_code
        == 200
    )
