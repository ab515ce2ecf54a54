"""POST /convert and /jobs: success, deduplication, every error path, and nothing stored on failure."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from reparam_core import build_train_model, make_reference
from service.app import create_app
from service.config import Settings
from tests.helpers import SERVICE_SPEC as SPEC
from tests.helpers import convert_form, randomize_, state_of, wait_for
from tests.service.conftest import Held


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in (settings.resolved_artifacts_dir / "sha256").rglob("*") if p.is_file()]


@pytest.mark.databases
def test_convert_creates_version_then_deduplicates(
    client: TestClient, checkpoint: Path, settings: Settings
) -> None:
    first = client.post("/convert", **convert_form(checkpoint))
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["model"] == "tiny" and body["version"] == 1 and body["created"]
    assert body["report"]["passed"] and len(body["digest"]) == 64 and "fuse" in body["timings"]
    again = client.post("/convert", **convert_form(checkpoint))
    assert again.status_code == 200 and again.json()["version"] == 1 and not again.json()["created"]
    other_spec = {**SPEC, "labels": ["a", "b", "c", "d"]}
    third = client.post("/convert", **convert_form(checkpoint, spec=other_spec))
    assert third.status_code == 201 and third.json()["version"] == 2
    assert third.json()["digest"] == body["digest"]  # same weights: one content-addressed folder
    assert len({p.parent for p in stored_files(settings)}) == 1


def test_gate_failure_is_422_with_report_and_stores_nothing(
    client: TestClient, checkpoint: Path, settings: Settings
) -> None:
    response = client.post("/convert", **convert_form(checkpoint, tolerance="1e-30"))
    assert response.status_code == 422
    assert response.json()["report"]["passed"] is False and "gate failed" in response.json()["detail"]
    assert client.get("/models").json() == [] and stored_files(settings) == []


def test_bad_inputs_get_precise_errors(
    client: TestClient, checkpoint: Path, tmp_path: Path, settings: Settings
) -> None:
    bad = client.post("/convert", **convert_form(checkpoint, spec={"family": "repvgg", "variant": "Z9"}))
    assert bad.status_code == 422 and "unknown repvgg variant 'Z9'" in bad.json()["detail"]
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    bad = client.post("/convert", **convert_form(junk))
    assert bad.status_code == 400 and bad.json()["detail"].startswith(
        "junk.pt: neither safetensors nor a readable"
    )
    assert str(settings.data_dir) not in bad.json()["detail"]  # no server paths in errors
    wrong = client.post(
        "/convert", **convert_form(checkpoint, spec={**SPEC, "num_classes": 7, "labels": None})
    )
    assert (
        wrong.status_code == 400
        and "head.fc.weight: checkpoint (4, 16) vs model (7, 16)" in wrong.json()["detail"]
    )
    name = client.post("/convert", **convert_form(checkpoint, name="../etc"))
    assert name.status_code == 422 and "body.name: String should match pattern" in name.json()["detail"]
    assert "(got '../etc')" in name.json()["detail"]
    missing = client.post("/convert", data={"name": "x"})
    assert missing.status_code == 422 and "checkpoint" in missing.json()["detail"]
    assert client.get("/models").json() == [] and stored_files(settings) == []
    assert list((settings.resolved_artifacts_dir / "tmp").iterdir()) == []  # uploads cleaned up


def test_reference_outputs_hold_the_conversion_to_the_users_model(
    client: TestClient, checkpoint: Path, tmp_path: Path, settings: Settings
) -> None:
    inputs = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    good, other = tmp_path / "good.safetensors", tmp_path / "other.safetensors"
    make_reference(randomize_(build_train_model(SPEC), seed=0), inputs, good)  # the checkpoint's net
    make_reference(randomize_(build_train_model(SPEC), seed=1), inputs, other)  # another net
    form = convert_form(checkpoint)
    failed = client.post(
        "/convert",
        files={**form["files"], "reference": ("other.safetensors", other.read_bytes())},
        data=form["data"],
    )
    assert failed.status_code == 422 and failed.json()["report"]["reference"]["passed"] is False
    assert client.get("/models").json() == [] and stored_files(settings) == []
    passed = client.post(
        "/convert",
        files={**form["files"], "reference": ("good.safetensors", good.read_bytes())},
        data=form["data"],
    )
    assert passed.status_code == 201 and passed.json()["report"]["reference"]["passed"] is True
    plain = client.post("/convert", **form)  # no reference: another conversion, not the proven one
    assert plain.status_code == 201 and plain.json()["version"] == 2
    junk = client.post("/convert", files={**form["files"], "reference": ("r", b"junk")}, data=form["data"])
    assert junk.status_code == 422 and junk.json()["detail"].startswith("reference: not a readable")


def test_weights_field_picks_ema(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "both.pth"
    torch.save({"state_dict": state_of(SPEC, 0), "state_dict_ema": state_of(SPEC, 1)}, path)
    ema = client.post("/convert", **convert_form(path, weights="ema"))
    model = client.post("/convert", **convert_form(path, weights="model"))
    assert (ema.status_code, model.status_code) == (201, 201)
    assert ema.json()["report"]["weights"] == "ema" and model.json()["report"]["weights"] == "model"
    assert ema.json()["digest"] != model.json()["digest"]
    bad = client.post("/convert", **convert_form(path, weights="best"))
    assert bad.status_code == 422 and "weights" in bad.json()["detail"]


def test_upload_cap_is_413(settings: Settings, checkpoint: Path) -> None:
    capped = settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(create_app(capped)) as client:
        response = client.post("/convert", **convert_form(checkpoint))
        assert response.status_code == 413 and "larger than 1000 bytes" in response.json()["detail"]
        assert client.get("/models").json() == []


def test_token_required_when_configured(settings: Settings, checkpoint: Path) -> None:
    secured = settings.model_copy(update={"api_token": "s3cret"})
    with TestClient(create_app(secured)) as client:
        assert client.post("/convert", **convert_form(checkpoint)).status_code == 401
        wrong = client.post("/convert", headers={"Authorization": "Bearer nope"}, **convert_form(checkpoint))
        assert wrong.status_code == 401
        ok = client.post("/convert", headers={"Authorization": "Bearer s3cret"}, **convert_form(checkpoint))
        assert ok.status_code == 201
        assert client.delete("/models/tiny/versions/1").status_code == 401
        assert client.get("/models/tiny").status_code == 200  # reads stay open


def finished_job(client: TestClient, status_url: str) -> dict | None:
    job = client.get(status_url).json()
    return job if job["status"] in {"succeeded", "failed"} else None


@pytest.mark.databases
def test_async_conversion_returns_202_and_a_job_to_poll(client: TestClient, checkpoint: Path) -> None:
    accepted = client.post("/convert?wait=false", **convert_form(checkpoint))
    assert accepted.status_code == 202 and accepted.headers["Location"] == accepted.json()["status_url"]
    job = wait_for(lambda: finished_job(client, accepted.json()["status_url"]))
    assert job["status"] == "succeeded" and job["result"]["version"] == 1
    assert client.get(job["links"]["version"]).status_code == 200
    assert (
        client.get(f"/jobs/{'0' * 32}").status_code == 404 and client.get("/jobs/unknown").status_code == 422
    )


@pytest.mark.databases
def test_async_gate_failure_is_reported_on_the_job(client: TestClient, checkpoint: Path) -> None:
    accepted = client.post("/convert?wait=false", **convert_form(checkpoint, tolerance="1e-30"))
    job = wait_for(lambda: finished_job(client, accepted.json()["status_url"]))
    assert (
        job["status"] == "failed"
        and job["result"]["status"] == 422
        and job["result"]["report"]["passed"] is False
    )


@pytest.mark.databases
def test_a_job_shows_its_stage_while_it_runs_and_every_stage_when_done(
    client: TestClient, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held inside the library's ``fuse`` stage: the job says so, with the stages before it timed."""
    from reparam_core import conversion
    from service.jobs import STAGES

    inside, release = threading.Event(), threading.Event()
    fuse = conversion.fused_state_dict

    def held_fuse(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        release.wait(timeout=30)
        return fuse(*args, **kwargs)

    monkeypatch.setattr(conversion, "fused_state_dict", held_fuse)
    accepted = client.post("/convert?wait=false", **convert_form(checkpoint))
    assert inside.wait(timeout=30), "the conversion never reached the fuse stage"
    running = client.get(accepted.json()["status_url"]).json()
    release.set()
    assert running["status"] == "running" and running["stage"] == "fuse"
    assert list(running["stages"]) == ["parse", "read", "build"]
    assert running["progress"] == round(3 / len(STAGES), 3)
    replica = client.app.state.settings.resolved_replica_id  # type: ignore[attr-defined]
    assert running["attempts"] == 1 and running["replica"] == replica and running["heartbeat_at"]
    done = wait_for(lambda: finished_job(client, accepted.json()["status_url"]))
    assert done["status"] == "succeeded" and done["stage"] is None and done["progress"] == 1
    # the service's list follows the library's order; model.onnx is exported after registration,
    # and without calibration images there is no quantization report or int8 model
    assert list(done["stages"]) == [
        stage for stage in STAGES if stage not in ("onnx", "quantization", "int8")
    ]


@pytest.mark.databases
def test_a_failed_job_says_which_stage_it_failed_in(
    client: TestClient, checkpoint: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:-100])
    accepted = client.post("/convert?wait=false", **convert_form(truncated))
    job = wait_for(lambda: finished_job(client, accepted.json()["status_url"]))
    assert job["status"] == "failed" and job["result"]["status"] == 400
    assert job["stage"] == "read" and list(job["stages"]) == ["parse", "read"]
    # the gate's verdict comes once its last check (the serving configuration) has run
    accepted = client.post("/convert?wait=false", **convert_form(checkpoint, tolerance="1e-30"))
    job = wait_for(lambda: finished_job(client, accepted.json()["status_url"]))
    assert job["status"] == "failed" and job["stage"] == "serving" and "validate" in job["stages"]


def test_a_running_conversion_does_not_block_other_requests(
    client: TestClient, checkpoint: Path, held_conversion: Held
) -> None:
    """The conversion is held inside its worker until /healthz has answered: if it ran on the event
    loop, /healthz could only answer after the hold timed out, and the job would be over by then."""
    started, release = held_conversion.inside, held_conversion.release
    accepted = client.post("/convert?wait=false", **convert_form(checkpoint))
    assert accepted.status_code == 202
    assert started.wait(timeout=30), "the conversion never started"
    assert client.get("/healthz").status_code == 200
    still_running = client.get(accepted.json()["status_url"]).json()["status"] == "running"
    release.set()
    assert still_running
    assert wait_for(lambda: finished_job(client, accepted.json()["status_url"]))["status"] == "succeeded"


ALIAS_BOMB = "l0: &l0 [lol]\n" + "\n".join(
    f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ALIAS_BOMB, "aliases (*name) are not allowed"),
        ('{"family": "repvgg", "stem": {"width": 8}, "stages": [{"depth": 100000, "width": 8}]}', "depth"),
        (
            '{"family": "repvgg", "variant": "A0", "input_size": [1536, 1536]}',
            "GMACs at input_size [1536, 1536]",
        ),
        ('{"family": "repvgg", "variant": "B3", "num_classes": 100000}', "M parameters"),
        ("[" * 50_000, "nested deeper"),
    ],
    ids=["yaml-alias-bomb", "depth", "input-size-cost", "parameter-cost", "nesting"],
)
def test_costly_or_hostile_specs_are_refused_before_any_work(
    client: TestClient, checkpoint: Path, settings: Settings, spec: str, message: str
) -> None:
    form = convert_form(checkpoint)
    form["data"]["spec"] = spec
    started = time.perf_counter()
    answer = client.post("/convert", **form)
    assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
    assert time.perf_counter() - started < 5
    assert client.get("/models").json() == [] and stored_files(settings) == []


@pytest.mark.parametrize(
    ("convert_dtype", "message"),
    [
        (lambda t: t > 0, "(torch.bool)"),
        (lambda t: t.long(), "(torch.int64)"),
        (lambda t: t.to(torch.complex64), "(torch.complex64)"),
        (lambda t: t.to(torch.float8_e4m3fn), "(torch.float8_e4m3fn)"),
        (lambda t: t.to_sparse(), "sparse (or other non-strided) tensors are not read"),
    ],
    ids=["bool", "int64", "complex", "float8", "sparse"],
)
def test_weights_of_other_dtypes_are_400(
    client: TestClient, tmp_path: Path, convert_dtype: Any, message: str
) -> None:
    state = state_of(SPEC)
    key = next(k for k in state if k.endswith("conv.weight"))
    path = tmp_path / "odd.pth"
    torch.save({**state, key: convert_dtype(state[key])}, path)
    answer = client.post("/convert", **convert_form(path))
    assert answer.status_code == 400 and message in answer.json()["detail"], answer.text


def test_spec_serving_and_labels_may_be_files_or_text(client: TestClient, checkpoint: Path) -> None:
    form = convert_form(checkpoint)
    spec = form["data"].pop("spec").encode()
    files = {
        **form["files"],
        "spec": ("spec.json", spec, "application/json"),
        "serving": ("serving.json", b'{"precision": "fp32"}', "application/json"),
        "labels": ("labels.txt", b"cat\ndog\nowl\nfox\n", "text/plain"),
    }
    made = client.post("/convert", files=files, data=form["data"])
    assert made.status_code == 201, made.text
    version = client.get(made.json()["links"]["self"]).json()
    assert version["spec"]["labels"] == ["cat", "dog", "owl", "fox"]
    as_text = client.post("/convert", **convert_form(checkpoint, labels='["a", "b", "c", "d"]'))
    assert as_text.status_code == 201, as_text.text
    assert client.get(as_text.json()["links"]["self"]).json()["spec"]["labels"] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("labels", "detail"),
    [
        ("a\nb", "2 labels for num_classes=4"),
        ('["a", 1, "c", "d"]', "labels: a JSON list of strings"),
        ("[oops", "labels: not a valid JSON list"),
        ("imagenet-1k", "1000 labels for num_classes=4"),
    ],
)
def test_bad_labels_are_422(client: TestClient, checkpoint: Path, labels: str, detail: str) -> None:
    response = client.post("/convert", **convert_form(checkpoint, labels=labels))
    assert response.status_code == 422 and detail in response.json()["detail"], response.text


def test_a_non_utf8_spec_file_is_422(client: TestClient, checkpoint: Path) -> None:
    form = convert_form(checkpoint)
    form["data"].pop("spec")
    files = {**form["files"], "spec": ("spec.json", b"\xff\xfe\x00bad", "application/json")}
    response = client.post("/convert", files=files, data=form["data"])
    assert response.status_code == 422 and "not UTF-8" in response.json()["detail"]


def test_timings_cover_the_whole_conversion(client: TestClient, checkpoint: Path) -> None:
    """From saving the upload to the backend's registration, in the answer, the registry and /metrics."""
    timings = client.post("/convert", **convert_form(checkpoint)).json()["timings"]
    assert next(iter(timings)) == "save" and list(timings)[-2:] == ["store", "register"]
    assert {"read", "build", "fuse", "validate"} <= set(timings) and all(t >= 0 for t in timings.values())
    assert client.get("/models/tiny/versions/1").json()["timings"] == timings
    metrics = client.get("/metrics").text
    assert 'reparam_conversion_stage_seconds_count{stage="register"} 1.0' in metrics
