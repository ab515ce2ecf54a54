"""The registry stays true: immutable version numbers, one version per conversion under concurrency,
no architecture swapped under a name, bounded tolerances, and a clean state after a crash."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.store import MetadataStore
from tests.helpers import ROOT, convert_form, make_checkpoint, wait_for
from tests.helpers import SERVICE_SPEC as SPEC


@pytest.mark.databases
def test_version_numbers_are_never_reused(client: TestClient, checkpoint: Path, tmp_path: Path) -> None:
    assert client.post("/convert", **convert_form(checkpoint)).json()["version"] == 1
    second = make_checkpoint(tmp_path / "second.pth", seed=1)
    v2 = client.post("/convert", **convert_form(second)).json()
    assert v2["version"] == 2
    assert client.delete("/models/tiny/versions/2").status_code == 204
    third = make_checkpoint(tmp_path / "third.pth", seed=2)
    v3 = client.post("/convert", **convert_form(third)).json()
    assert v3["version"] == 3 and v3["digest"] != v2["digest"]
    assert client.get("/models/tiny/versions/2").status_code == 404
    assert client.delete("/models/tiny/versions/1").status_code == 204
    assert client.delete("/models/tiny/versions/3").status_code == 204  # the model has no version left
    assert client.post("/convert", **convert_form(second)).json()["version"] == 4


@pytest.mark.databases
def test_a_restart_keeps_the_numbering(settings: Settings, checkpoint: Path, tmp_path: Path) -> None:
    with TestClient(create_app(settings)) as first:
        first.post("/convert", **convert_form(checkpoint))
        first.post("/convert", **convert_form(make_checkpoint(tmp_path / "b.pth", seed=1)))
        assert first.delete("/models/tiny/versions/2").status_code == 204
    with TestClient(create_app(settings)) as second:
        again = second.post("/convert", **convert_form(make_checkpoint(tmp_path / "c.pth", seed=2)))
        assert again.json()["version"] == 3


@pytest.mark.databases
def test_identical_concurrent_conversions_make_one_version(settings: Settings, checkpoint: Path) -> None:
    async def post_four() -> list[httpx.Response]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                form = convert_form(checkpoint)
                return await asyncio.gather(*(client.post("/convert", **form) for _ in range(4)))

    answers = asyncio.run(post_four())
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [a.text for a in answers]
    assert {a.json()["version"] for a in answers} == {1}
    assert [a.json()["created"] for a in answers].count(True) == 1
    leftovers = list((settings.resolved_artifacts_dir / "tmp").iterdir())
    assert leftovers == []  # every request's upload folder is gone


def test_the_database_refuses_a_second_identical_version(tmp_path: Path) -> None:
    """Two replicas racing past the duplicate check: the unique index decides, both see one row."""
    store = MetadataStore(f"sqlite:///{tmp_path / 'race.db'}")
    args = ("m", "d" * 64, "c" * 64, "s" * 64, {}, {}, {}, {"precision": "fp32"})
    first, created = store.add_version(*args)
    again, created_again = store.add_version(*args)
    assert created and not created_again and again == first
    other, created_other = store.add_version(*args[:-1], {"precision": "bf16"})
    assert created_other and other.version == 2


def test_another_architecture_under_a_name_is_a_conflict(
    client: TestClient, checkpoint: Path, tmp_path: Path
) -> None:
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    wider = {**SPEC, "stages": [{"depth": 2, "width": 8}, {"depth": 1, "width": 32}]}
    wide_checkpoint = make_checkpoint(tmp_path / "wide.pth", spec=wider)
    refused = client.post("/convert", **convert_form(wide_checkpoint, spec=wider))
    assert refused.status_code == 409 and "differs in stages" in refused.json()["detail"]
    assert [v["version"] for v in client.get("/models/tiny").json()["versions"]] == [1]
    meant = client.post("/convert", **convert_form(wide_checkpoint, spec=wider, new_architecture="true"))
    assert meant.status_code == 201 and meant.json()["version"] == 2
    relabelled = {**wider, "labels": ["w", "x", "y", "z"], "preprocess": {"resize": 40, "crop": 32}}
    assert client.post("/convert", **convert_form(wide_checkpoint, spec=relabelled)).status_code == 201


@pytest.mark.parametrize("tolerance", ["inf", "nan", "-1", "0", "0.5"])
def test_meaningless_tolerances_are_refused_and_nothing_is_stored(
    client: TestClient, checkpoint: Path, tolerance: str
) -> None:
    for _ in range(2):  # a retry gets the same answer
        answer = client.post("/convert", **convert_form(checkpoint, tolerance=tolerance))
        assert answer.status_code == 422 and answer.json()["detail"].startswith("body.tolerance")
    assert client.get("/models").json() == []


@pytest.mark.databases
def test_a_restart_after_a_crash_leaves_nothing_behind(settings: Settings, checkpoint: Path) -> None:
    """What a SIGKILL mid-conversion leaves in ``tmp/`` (an upload, a staging folder) is removed."""
    tmp = settings.resolved_artifacts_dir / "tmp"
    (tmp / "upload-abc").mkdir(parents=True)
    (tmp / "upload-abc" / "checkpoint").write_bytes(b"x" * 1000)
    (tmp / "staging-xyz" / "artifacts").mkdir(parents=True)
    with TestClient(create_app(settings)) as client:
        assert list(tmp.iterdir()) == []
        assert client.post("/convert", **convert_form(checkpoint)).status_code == 201


def test_deleting_the_last_version_of_a_digest_leaves_no_empty_folders(
    client: TestClient, checkpoint: Path, settings: Settings
) -> None:
    client.post("/convert", **convert_form(checkpoint))
    assert client.delete("/models/tiny/versions/1").status_code == 204
    assert list((settings.resolved_artifacts_dir / "sha256").iterdir()) == []


@pytest.mark.databases
def test_a_job_killed_mid_conversion_is_completed_by_the_next_process(
    tmp_path: Path, database_url: str
) -> None:
    """SIGKILL of the service (``python -m service.main``) while a job's conversion validates: the
    next process on the same data folder and database takes the job over once its lease has run
    out and completes it, as one version, leaving no job inputs and no staging folders."""
    data = tmp_path / "data"
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REPARAM_DATA_DIR": str(data),
        "REPARAM_DATABASE_URL": database_url,
        "REPARAM_PORT": str(port),
        "REPARAM_BACKEND": "inprocess",
        "REPARAM_DEVICE": "cpu",
        "REPARAM_EXPORT_PROGRAM": "false",
        "REPARAM_JOB_HEARTBEAT_S": "0.5",
        "REPARAM_JOB_LEASE_S": "3",
    }
    env.pop("REPARAM_API_TOKEN", None)
    base = f"http://127.0.0.1:{port}"
    spec = {"family": "repvgg", "variant": "A0", "num_classes": 10, "input_size": [224, 224]}  # gate: ~5 s
    checkpoint = make_checkpoint(tmp_path / "a0.pth", spec=spec)

    def serve() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "service.main"], cwd=ROOT, env=env)
        wait_for(lambda: _answers(f"{base}/healthz") or None)
        return process

    def job_status() -> dict[str, Any]:
        return httpx.get(f"{base}{job}").json()  # type: ignore[no-any-return]

    first = serve()
    try:
        accepted = httpx.post(
            f"{base}/convert?wait=false", timeout=120, **convert_form(checkpoint, spec=spec)
        )
        job = accepted.json()["status_url"]
        killed_in = wait_for(
            lambda: job_status() if job_status()["stage"] == "validate" else None, interval=0.05
        )
        assert any((data / "artifacts" / "tmp").iterdir())  # its work folder
        assert len(list((data / "artifacts" / "jobs").iterdir())) == 1  # its stored inputs
    finally:
        first.kill()
        first.wait()
    second = serve()
    try:
        done = wait_for(lambda: job_status() if job_status()["status"] != "running" else None, timeout=180)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2 and done["replica"] != killed_in["replica"]
        assert done["result"]["version"] == 1 and done["result"]["created"] is True
        assert [v["version"] for v in httpx.get(f"{base}/models/tiny").json()["versions"]] == [1]
        assert list((data / "artifacts" / "jobs").iterdir()) == []
        onnx = f"{base}/models/tiny/versions/1/artifacts/model.onnx"  # exported in the background
        wait_for(lambda: httpx.get(onnx).status_code == 200 or None, timeout=120)
        assert list((data / "artifacts" / "tmp").iterdir()) == []
    finally:
        second.terminate()
        second.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False
