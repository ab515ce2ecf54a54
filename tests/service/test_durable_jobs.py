"""Conversion jobs outlive the replica that took them: a job whose replica died (its row running
under a lease that ran out, its inputs stored) is completed by the next runner, as one version, and
its inputs are deleted; a replica stopping gracefully queues its job again; inputs no job names are
swept."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from reparam_core import ServingOptions, convert, parse_spec
from service.app import create_app
from service.config import Settings
from service.jobs import ConversionRequest, Upload
from service.store import LocalArtifactStore, MetadataStore
from service.store.job_inputs import LocalJobInputs
from service.store.metadata import _Job
from tests.helpers import SERVICE_SPEC, convert_form, png_bytes, wait_for, wait_ready
from tests.service.conftest import Held

pytestmark = pytest.mark.databases
IMAGE = {"content": png_bytes(), "headers": {"Content-Type": "image/png"}}


def quick(settings: Settings) -> Settings:
    """Leases short enough for a test: a job of a stopped replica is taken over within 2 s."""
    return settings.model_copy(update={"job_poll_s": 0.1, "job_heartbeat_s": 0.3, "job_lease_s": 2.0})


def inputs_of(settings: Settings) -> LocalJobInputs:
    return LocalJobInputs(settings.resolved_artifacts_dir / "jobs")


def request_for(checkpoint: Path, folder: Path) -> ConversionRequest:
    folder.mkdir(parents=True)
    shutil.copy(checkpoint, folder / "checkpoint")
    data = checkpoint.read_bytes()
    upload = Upload(folder / "checkpoint", hashlib.sha256(data).hexdigest(), len(data), checkpoint.name)
    return ConversionRequest("tiny", parse_spec(SERVICE_SPEC), upload, 1e-9, ServingOptions())


def died_running(settings: Settings, request: ConversionRequest) -> str:
    """The state a replica killed mid-conversion leaves: the job claimed by it, its lease run out."""
    store, job_id = MetadataStore(settings.resolved_database_url), uuid.uuid4().hex
    inputs_of(settings).put(job_id, request.upload.path.parent)
    store.create_job(job_id, "tiny", request.to_json())
    job = store.claim_job("dead-replica", settings.job_lease_s, settings.job_max_attempts)
    assert job is not None and job.id == job_id
    store.set_job_stage(job, "fuse")
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.job_lease_s + 1)
    with store.engine.begin() as connection:
        connection.execute(sa.update(_Job).where(_Job.id == job_id).values(heartbeat_at=stale))
    store.engine.dispose()
    return job_id


def finished(client: TestClient, job_id: str) -> dict[str, Any] | None:
    job = client.get(f"/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed") else None  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "stored_before_dying", [False, True], ids=["mid-conversion", "stored-not-registered"]
)
def test_a_job_whose_replica_died_is_completed_by_the_next_start(
    settings: Settings, checkpoint: Path, tmp_path: Path, stored_before_dying: bool
) -> None:
    """Killed mid-conversion, or after inserting the version but before registering it: either way
    the job succeeds on its second attempt with exactly one version, which serves."""
    settings = quick(settings)
    request = request_for(checkpoint, settings.resolved_artifacts_dir / "tmp" / "upload-x")
    if stored_before_dying:
        result = convert(request.spec, checkpoint, device="cpu", tolerance=1e-9, serving=request.serving)
        digest = LocalArtifactStore(settings.resolved_artifacts_dir).put(result, export=False)
        MetadataStore(settings.resolved_database_url).add_version(
            "tiny",
            digest,
            request.upload.sha256,
            request.digest(),
            request.spec.model_dump(mode="json"),
            result.report.model_dump(mode="json"),
            {},
            request.serving.model_dump(mode="json"),
        )
    job_id = died_running(settings, request)
    with TestClient(create_app(settings)) as client:
        job = wait_for(lambda: finished(client, job_id), timeout=120)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2 and job["replica"] == settings.resolved_replica_id
        assert job["result"]["version"] == 1 and job["result"]["created"] is not stored_before_dying
        assert [v["version"] for v in client.get("/models/tiny").json()["versions"]] == [1]
        wait_ready(client)  # registered by the conversion, or by the supervisor (stored, not registered)
        assert client.post("/predict/tiny", **IMAGE).status_code == 200
    assert os.listdir(settings.resolved_artifacts_dir / "jobs") == []
    assert os.listdir(settings.resolved_artifacts_dir / "tmp") == []


def test_a_graceful_stop_queues_the_job_again_and_the_next_start_runs_it(
    settings: Settings, checkpoint: Path, held_conversion: Held, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = quick(settings)
    inside, release = held_conversion.inside, held_conversion.release
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/convert?wait=false", **convert_form(checkpoint)).json()["job"]
        assert inside.wait(timeout=30)
    release.set()
    job = MetadataStore(settings.resolved_database_url).get_job(job_id)
    assert job is not None and job.status == "queued" and job.attempts == 0 and job.owner is None
    assert os.listdir(settings.resolved_artifacts_dir / "jobs") == [job_id]  # its inputs kept
    monkeypatch.setattr("service.jobs.conversions.convert", convert)
    with TestClient(create_app(settings)) as client:
        done = wait_for(lambda: finished(client, job_id), timeout=120)
        assert done["status"] == "succeeded" and done["attempts"] == 1 and done["result"]["version"] == 1
    assert os.listdir(settings.resolved_artifacts_dir / "jobs") == []


def test_out_of_attempts_the_job_fails_with_503_and_its_inputs_go(
    settings: Settings, checkpoint: Path
) -> None:
    settings = quick(settings).model_copy(update={"job_max_attempts": 1})
    job_id = died_running(settings, request_for(checkpoint, settings.resolved_artifacts_dir / "tmp" / "u"))
    with TestClient(create_app(settings)) as client:
        job = wait_for(lambda: finished(client, job_id))
        assert job["status"] == "failed" and job["result"]["status"] == 503, job
        assert job["result"]["detail"] == (
            "the replica running this conversion stopped, once (last dead-replica): post it again"
        )
        assert job["stage"] == "fuse" and job["attempts"] == 1 and job["replica"] == "dead-replica"
        assert client.get("/models").json() == []
    assert os.listdir(settings.resolved_artifacts_dir / "jobs") == []


def test_inputs_no_job_names_are_swept_after_an_hour(settings: Settings, tmp_path: Path) -> None:
    inputs, hour_ago = inputs_of(settings), time.time() - 3601
    orphan, recent, running = (uuid.uuid4().hex for _ in range(3))
    for job_id in (orphan, recent, running):
        (tmp_path / job_id).mkdir()
        (tmp_path / job_id / "checkpoint").write_bytes(b"x")
        inputs.put(job_id, tmp_path / job_id)
    store = MetadataStore(settings.resolved_database_url)
    store.create_job(running, "tiny", {"name": "tiny"})
    assert store.claim_job("another-replica", settings.job_lease_s, settings.job_max_attempts) is not None
    for job_id in (orphan, running):  # stored an hour ago; the job still runs on another replica
        os.utime(inputs.root / job_id, (hour_ago, hour_ago))
    assert sorted(inputs.older_than(3600)) == sorted([orphan, running])
    with TestClient(create_app(settings)):  # the runner sweeps at its first poll
        wait_for(lambda: not (inputs.root / orphan).exists() or None)
    assert sorted(os.listdir(inputs.root)) == sorted([recent, running])


def test_a_lease_must_outlast_two_heartbeats() -> None:
    refused = re.escape("job_lease_s (10) must be more than twice job_heartbeat_s (5)")
    with pytest.raises(ValidationError, match=refused):
        Settings(job_lease_s=10, job_heartbeat_s=5)
    assert Settings(replica_id="replica-a").resolved_replica_id == "replica-a"
    assert Settings().resolved_replica_id == Settings().resolved_replica_id  # one name per process
