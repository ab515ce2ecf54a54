"""The production shape on loopback: two service replicas (processes of their own) on one PostgreSQL,
one S3-compatible server (moto) and one TorchServe that neither of them manages.

Convert on replica A, predict on B; move an alias on B, predict by it on A; delete on A, B answers
404 within the staleness bound (REPARAM_VERSION_CACHE_S); kill A in the middle of a conversion job,
B completes it: one version, no partial artifacts in the bucket, no leftover job inputs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from service.backends.torchserve_process import TorchServeProcess, find_java_home, torchserve_executable
from service.config import Settings
from service.store.s3 import MARKER
from tests.helpers import ROOT, SERVICE_SPEC, make_checkpoint, png_bytes, wait_for
from tests.servers import PostgresServer, free_port

pytestmark = pytest.mark.skipif(
    find_java_home() is None or torchserve_executable() is None,
    reason="needs Java and the torchserve package",
)
TOKEN = "replica-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STALENESS_S = 1.0  # REPARAM_VERSION_CACHE_S of both replicas
IMAGE = png_bytes(40, 40, seed=11)
LEASE_S = 4.0  # a job whose replica stopped renewing it for this long is taken over
A0 = {"family": "repvgg", "variant": "A0", "num_classes": 10}  # its gate takes seconds: time to kill


@pytest.fixture()
def torchserve(tmp_path: Path) -> Iterator[Settings]:
    """One TorchServe, started by the test (for the replicas it is external), and the settings that
    reach it; its model store is the folder the replicas share with it."""
    settings = Settings(
        data_dir=tmp_path / "torchserve",
        torchserve_model_store=tmp_path / "model-store",
        torchserve_inference_port=free_port(),
        torchserve_management_port=free_port(),
        torchserve_metrics_port=free_port(),
        torchserve_grpc_inference_port=free_port(),
        torchserve_grpc_management_port=free_port(),
    )
    process = TorchServeProcess(settings)
    process.spawn()
    try:
        wait_for(lambda: _answers(f"{process.inference_url}/ping"), timeout=180, interval=0.5)
        yield settings
    finally:
        process.stop()


def _answers(url: str) -> bool | None:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200 or None
    return None


class Replica:
    """``python -m service.main`` with the shared settings, its own data folder and port."""

    def __init__(self, name: str, environment: dict[str, str], folder: Path) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**environment, "REPARAM_DATA_DIR": str(folder / name), "REPARAM_PORT": str(self.port)}
        env["REPARAM_REPLICA_ID"] = name
        self.log = folder / f"{name}.log"  # a pipe would fill up and stall it
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.main"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def wait_started(self) -> None:
        def started() -> bool | None:
            assert self.process.poll() is None, f"replica {self.name} exited:\n{self.output()}"
            return _answers(f"{self.url}/healthz")

        wait_for(started, timeout=120, interval=0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def predict(self, version: int | str | None = None) -> httpx.Response:
        query = "" if version is None else f"?version={version}"
        return self.http.post(f"/predict/tiny{query}", content=IMAGE, headers={"Content-Type": "image/png"})

    def convert(self, checkpoint: Path, spec: dict[str, Any], wait: bool = True) -> httpx.Response:
        import json

        return self.http.post(
            f"/convert?wait={str(wait).lower()}",
            headers=AUTH,
            files={"checkpoint": (checkpoint.name, checkpoint.read_bytes(), "application/octet-stream")},
            data={"spec": json.dumps(spec), "name": "tiny", "new_architecture": "true"},
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.http.close()


@pytest.fixture()
def replicas(
    tmp_path: Path, postgres: PostgresServer, bucket: str, torchserve: Settings
) -> Iterator[tuple[Replica, Replica]]:
    database = postgres.new_database()
    environment = {
        **os.environ,  # PYTHONPATH (this checkout) and the AWS variables the bucket fixture set
        "REPARAM_DATABASE_URL": database,
        "REPARAM_ARTIFACTS_URL": f"s3://{bucket}/reparam",
        "REPARAM_BACKEND": "torchserve",
        "REPARAM_TORCHSERVE_URL": f"http://127.0.0.1:{torchserve.torchserve_inference_port}",
        "REPARAM_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{torchserve.torchserve_management_port}",
        "REPARAM_TORCHSERVE_MODEL_STORE": str(torchserve.resolved_model_store),
        "REPARAM_API_TOKEN": TOKEN,
        "REPARAM_DEVICE": "cpu",
        "REPARAM_EXPORT_PROGRAM": "false",
        "REPARAM_WORKERS_PER_MODEL": "1",
        "REPARAM_WARM_VERSIONS": "all",
        "REPARAM_VERSION_CACHE_S": str(STALENESS_S),
        "REPARAM_SUPERVISE_INTERVAL_S": "1",
        "REPARAM_JOB_POLL_S": "0.2",
        "REPARAM_JOB_HEARTBEAT_S": "0.5",
        "REPARAM_JOB_LEASE_S": str(LEASE_S),
    }
    started = [Replica(name, environment, tmp_path) for name in ("a", "b")]
    try:
        for replica in started:
            replica.wait_started()
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.stop()
        postgres.drop_database(database)


def _within(seconds: float, poll: Any) -> float:
    """How long ``poll`` took to return something (it must within ``seconds``, plus a request)."""
    started = time.monotonic()
    wait_for(poll, timeout=seconds + 10, interval=0.05)
    took = time.monotonic() - started
    assert took <= seconds + 1.0, f"took {took:.2f} s, the bound is {seconds} s"
    return took


def test_two_replicas_share_versions_aliases_and_deletions(
    replicas: tuple[Replica, Replica], tmp_path: Path, bucket: str, torchserve: Settings
) -> None:
    a, b = replicas
    first = a.convert(make_checkpoint(tmp_path / "1.pth", seed=1), SERVICE_SPEC)
    assert first.status_code == 201, first.text
    second = a.convert(make_checkpoint(tmp_path / "2.pth", seed=2), SERVICE_SPEC)
    assert second.status_code == 201, second.text
    assert (first.json()["version"], second.json()["version"]) == (1, 2)

    on_a = a.predict(1)
    assert on_a.status_code == 200, on_a.text
    on_b = b.predict(1)
    assert on_b.status_code == 200, on_b.text
    assert on_b.json() == on_a.json()  # one registration in the shared TorchServe serves both

    moved = b.http.put("/models/tiny/aliases/production", json={"version": 1}, headers=AUTH)
    assert moved.status_code == 200, moved.text
    _within(STALENESS_S, lambda: a.predict("production").json()["version"] == 1 or None)

    assert a.http.delete("/models/tiny/versions/2", headers=AUTH).status_code == 204
    _within(STALENESS_S, lambda: b.predict(2).status_code == 404 or None)
    assert b.predict(1).status_code == 200
    registered = httpx.get(f"http://127.0.0.1:{torchserve.torchserve_management_port}/models").json()
    assert {m["modelName"] for m in registered["models"]} == {"tiny-v1"}  # and no replica brings v2 back
    time.sleep(3)  # three supervision rounds of both replicas
    registered = httpx.get(f"http://127.0.0.1:{torchserve.torchserve_management_port}/models").json()
    assert {m["modelName"] for m in registered["models"]} == {"tiny-v1"}
    _assert_only_complete_folders(bucket, expected=1)


def _assert_only_complete_folders(bucket: str, expected: int) -> None:
    """Every artifact folder in the bucket has its marker; nothing else is there."""
    s3 = boto3.client("s3")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    folders = {key.rsplit("/", 1)[0] for key in keys}
    assert all(folder.startswith("reparam/sha256/") for folder in folders), sorted(keys)
    assert {f for f in folders if f"{f}/{MARKER}" in keys} == folders
    assert len(folders) == expected


@pytest.mark.parametrize("kill_in", ["fuse", "register"])
def test_a_job_whose_replica_is_killed_is_completed_by_the_other(
    replicas: tuple[Replica, Replica], tmp_path: Path, bucket: str, kill_in: str
) -> None:
    """SIGKILL the replica running a conversion job (in the middle of the conversion, or after the
    version's row is stored, while it is registered): the other takes the job over once the lease
    lapses and completes it. One version, only complete artifact folders, no job inputs left."""
    by_name = {replica.name: replica for replica in replicas}
    accepted = replicas[0].convert(make_checkpoint(tmp_path / "a0.pth", spec=A0, seed=3), A0, wait=False)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()["job"]
    order = ["parse", "read", "build", "fuse", "assemble", "onnx", "validate", "serving", "store", "register"]

    def reached() -> dict[str, Any] | None:
        state = replicas[1].http.get(f"/jobs/{job}", headers=AUTH).json()  # every replica sees it
        assert state["status"] in ("queued", "running"), state
        return state if state["stage"] in order[order.index(kill_in) :] else None

    running = wait_for(reached, timeout=120, interval=0.02)
    killed = by_name[running["replica"]]
    killed.kill()
    survivor = next(replica for replica in replicas if replica is not killed)
    assert running["attempts"] == 1

    def finished() -> dict[str, Any] | None:
        state = survivor.http.get(f"/jobs/{job}", headers=AUTH).json()
        return state if state["status"] in ("succeeded", "failed") else None

    done = wait_for(finished, timeout=300, interval=0.2)
    assert done["status"] == "succeeded", done
    assert (done["attempts"], done["replica"]) == (2, survivor.name)
    assert done["result"]["version"] == 1
    versions = survivor.http.get("/models/tiny").json()["versions"]
    assert [v["version"] for v in versions] == [1]  # no duplicate
    wait_for(lambda: survivor.predict(1).status_code == 200 or None, timeout=120)
    assert survivor.predict(1).json()["version"] == 1
    _assert_only_complete_folders(bucket, expected=1)  # no partial folder, no job inputs left
