"""Artifacts in S3-compatible storage (``REPARAM_ARTIFACTS_URL``), against moto's standalone server
on loopback: the service's whole flow, a second replica that only has the bucket, and readers that
never take a half-written folder for a stored one."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from reparam_core import ConversionResult, convert
from reparam_core.deploy import ONNX, REPORT, SPEC, WEIGHTS
from service.app import create_app
from service.config import Settings
from service.store.job_inputs import S3JobInputs
from service.store.s3 import MARKER, S3ArtifactStore
from tests.helpers import SERVICE_SPEC, convert_form, png_bytes, ready, wait_for, wait_ready
from tests.service.conftest import Held

IMAGE = {"content": png_bytes(), "headers": {"Content-Type": "image/png"}}


def objects(bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def on_s3(settings: Settings, bucket: str, data: str = "data") -> Settings:
    return settings.model_copy(
        update={"artifacts_url": f"s3://{bucket}/reparam", "data_dir": settings.data_dir.parent / data}
    )


@pytest.mark.databases
def test_convert_predict_download_delete(settings: Settings, bucket: str, checkpoint: Path) -> None:
    s3_settings = on_s3(settings, bucket)
    with TestClient(create_app(s3_settings)) as client:
        created = client.post("/convert", **convert_form(checkpoint))
        assert created.status_code == 201, created.text
        digest = created.json()["digest"]
        folder = f"reparam/sha256/{digest[:2]}/{digest}/"
        onnx = wait_for(lambda: ready(client, "/models/tiny/versions/1/artifacts/model.onnx"))
        stored = objects(bucket)
        assert set(stored) == {folder + name for name in (WEIGHTS, SPEC, REPORT, ONNX, MARKER)}
        assert hashlib.sha256(stored[folder + WEIGHTS]).hexdigest() == digest  # content-addressed
        assert onnx.content == stored[folder + ONNX]
        weights = client.get("/models/tiny/versions/1/artifacts/model.safetensors")
        assert weights.status_code == 200 and weights.content == stored[folder + WEIGHTS]
        assert client.post("/predict/tiny", **IMAGE).status_code == 200
        assert client.delete("/models/tiny/versions/1").status_code == 204
        assert objects(bucket) == {}
        assert not (s3_settings.resolved_artifacts_dir / "sha256" / digest[:2]).exists()  # cache too


@pytest.mark.databases
def test_a_replica_with_an_empty_cache_serves_from_the_bucket(
    settings: Settings, bucket: str, checkpoint: Path
) -> None:
    """Replica B shares A's database and bucket but not its disk: it fetches what A stored, and
    drops its copy once A deletes the version."""
    first, second = on_s3(settings, bucket, "a"), on_s3(settings, bucket, "b")
    with TestClient(create_app(first)) as a:
        digest = a.post("/convert", **convert_form(checkpoint)).json()["digest"]
        onnx = wait_for(lambda: ready(a, "/models/tiny/versions/1/artifacts/model.onnx")).content
        with TestClient(create_app(second)) as b:
            wait_ready(b)
            assert b.post("/predict/tiny", **IMAGE).json() == a.post("/predict/tiny", **IMAGE).json()
            assert b.get("/models/tiny/versions/1/artifacts/model.onnx").content == onnx
            cached = second.resolved_artifacts_dir / "sha256" / digest[:2] / digest
            assert sorted(p.name for p in cached.iterdir()) == sorted([ONNX, REPORT, SPEC, WEIGHTS])
            assert a.delete("/models/tiny/versions/1").status_code == 204
            assert not b.app.state.artifacts.local_path(digest).exists()  # type: ignore[attr-defined]
            assert not cached.exists()


@pytest.mark.databases
def test_a_queued_jobs_inputs_wait_in_the_bucket(
    settings: Settings, bucket: str, checkpoint: Path, held_conversion: Held
) -> None:
    """``wait=false``: the checkpoint is in the bucket (marker last) while the job runs, where any
    replica can fetch it, and gone once the job has succeeded."""
    inside, release = held_conversion.inside, held_conversion.release
    s3_settings = on_s3(settings, bucket)
    with TestClient(create_app(s3_settings)) as client:
        job = client.post("/convert?wait=false", **convert_form(checkpoint)).json()["job"]
        assert inside.wait(timeout=30)
        stored = {key: data for key, data in objects(bucket).items() if key.startswith("reparam/jobs/")}
        release.set()
        assert set(stored) == {f"reparam/jobs/{job}/checkpoint", f"reparam/jobs/{job}/{MARKER}"}
        assert stored[f"reparam/jobs/{job}/checkpoint"] == checkpoint.read_bytes()
        done = wait_for(
            lambda: ready(client, f"/jobs/{job}", waiting=()).json()["status"] != "running" or None
        )
        assert client.get(f"/jobs/{job}").json()["status"] == "succeeded", done
        s3 = boto3.client("s3")  # the inputs are deleted right after the outcome is recorded
        wait_for(lambda: "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="reparam/jobs/") or None)
        assert not (s3_settings.resolved_artifacts_dir / "jobs").exists()  # nothing kept on local disk
        staging = s3_settings.resolved_artifacts_dir / "tmp"
        assert not [p for p in staging.iterdir() if p.name.startswith("upload-")]  # the upload removed


def test_job_inputs_in_the_bucket_are_fetched_whole_or_not_at_all(bucket: str, tmp_path: Path) -> None:
    inputs = S3JobInputs(boto3.client("s3"), bucket, "reparam")
    stored, partial = uuid.uuid4().hex, uuid.uuid4().hex
    (tmp_path / "upload").mkdir()
    (tmp_path / "upload" / "checkpoint").write_bytes(b"weights")
    (tmp_path / "upload" / "reference.safetensors").write_bytes(b"reference")
    inputs.put(stored, tmp_path / "upload")  # copied: the caller removes the folder
    inputs.fetch(stored, tmp_path / "work")
    assert {p.name: p.read_bytes() for p in (tmp_path / "work").iterdir()} == {
        "checkpoint": b"weights",
        "reference.safetensors": b"reference",
    }
    boto3.client("s3").put_object(Bucket=bucket, Key=f"reparam/jobs/{partial}/checkpoint", Body=b"half")
    with pytest.raises(FileNotFoundError, match="are gone"):  # no marker: not stored
        inputs.fetch(partial, tmp_path / "other")
    assert sorted(inputs.older_than(-60)) == sorted([stored, partial]) and inputs.older_than(3600) == []
    inputs.delete(stored)
    inputs.delete(partial)
    assert objects(bucket) == {}


@pytest.fixture()
def result(checkpoint: Path) -> ConversionResult:
    return convert(SERVICE_SPEC, checkpoint, device="cpu")


def test_a_folder_without_its_marker_is_absent(bucket: str, tmp_path: Path, result: ConversionResult) -> None:
    """An upload under way (or one a killed process left): every file but the marker."""
    writer = S3ArtifactStore(f"s3://{bucket}", tmp_path / "writer")
    digest = writer.put(result, export=False)
    s3 = boto3.client("s3")
    marker = f"sha256/{digest[:2]}/{digest}/{MARKER}"
    body = s3.get_object(Bucket=bucket, Key=marker)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=marker)
    reader = S3ArtifactStore(f"s3://{bucket}", tmp_path / "reader")
    assert not reader.local_path(digest).exists()
    assert not reader.add(digest, ONNX, lambda path: path.write_bytes(b"x"))
    assert f"sha256/{digest[:2]}/{digest}/{ONNX}" not in objects(bucket)
    s3.put_object(Bucket=bucket, Key=marker, Body=body)  # the upload completes
    fetched = reader.local_path(digest)
    assert sorted(p.name for p in fetched.iterdir()) == sorted([REPORT, SPEC, WEIGHTS])
    assert reader.add(digest, ONNX, lambda path: path.write_bytes(b"onnx"))
    assert (writer.local_path(digest) / ONNX).read_bytes() == b"onnx"  # the writer's cache catches up


def test_weights_that_are_not_their_digest_are_refused(
    bucket: str, tmp_path: Path, result: ConversionResult
) -> None:
    digest = S3ArtifactStore(f"s3://{bucket}/p", tmp_path / "writer").put(result, export=False)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"p/sha256/{digest[:2]}/{digest}/{WEIGHTS}", Body=b"x")
    reader = S3ArtifactStore(f"s3://{bucket}/p", tmp_path / "reader")
    with pytest.raises(RuntimeError, match="does not have the digest"):
        reader.local_path(digest)
    assert not reader.cache.local_path(digest).exists()  # nothing cached


def test_the_same_weights_twice_are_one_folder(bucket: str, tmp_path: Path, result: ConversionResult) -> None:
    store = S3ArtifactStore(f"s3://{bucket}", tmp_path / "cache")
    assert store.put(result, export=False) == store.put(result, export=False)
    assert len(objects(bucket)) == 4  # three files and the marker


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///prefix", "http://bucket/prefix", "s3://Bucket_Name", "s3://bucket/p?x=1"]
)
def test_a_malformed_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="artifacts_url"):
        Settings(artifacts_url=url)


def test_a_missing_bucket_stops_the_start(settings: Settings, bucket: str) -> None:
    refused = pytest.raises(RuntimeError, match=r"S3 bucket 'no-such-bucket' at http://127\.0\.0\.1:")
    with refused, TestClient(create_app(on_s3(settings, "no-such-bucket"))):
        pass
