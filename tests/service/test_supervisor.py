"""The supervisor with the in-process backend: stored versions registered concurrently once the
port is open, a failing version reported and retried, giving up, and deletion under load."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reparam_core.deploy import ServingOptions
from service.app import create_app
from service.backends.inprocess import InProcessBackend
from service.config import Settings
from tests.helpers import convert_form, make_checkpoint, png_bytes, wait_for, wait_ready

IMAGE = {"content": png_bytes(), "headers": {"Content-Type": "image/png"}}


def store_versions(settings: Settings, tmp_path: Path, count: int) -> list[dict[str, Any]]:
    with TestClient(create_app(settings)) as client:
        return [
            client.post("/convert", **convert_form(make_checkpoint(tmp_path / f"{i}.pth", seed=i))).json()
            for i in range(count)
        ]


def test_stored_versions_register_concurrently_while_the_port_is_open(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_versions(settings, tmp_path, 3)
    spans: list[tuple[float, float]] = []
    register = InProcessBackend.register

    async def slow_register(
        self: InProcessBackend, name: str, version: int, path: Path, s: ServingOptions
    ) -> None:
        started = time.monotonic()
        await asyncio.sleep(1.0)  # as long as a TorchServe worker takes to start, or longer
        await register(self, name, version, path, s)
        spans.append((started, time.monotonic()))

    monkeypatch.setattr(InProcessBackend, "register", slow_register)
    settings = settings.model_copy(update={"registration_concurrency": 2})
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        waiting = client.get("/readyz")
        assert waiting.status_code == 503 and waiting.json()["state"] == "pending"
        assert waiting.json()["pending"] == 3 and waiting.json()["backend"] == "inprocess"
        assert client.post("/predict/tiny", **IMAGE).status_code == 503  # stored, not served yet
        assert wait_ready(client, timeout=30)["pending"] == 0
        assert client.post("/predict/tiny", **IMAGE).status_code == 200
    assert len(spans) == 3
    overlapping = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert overlapping == 2  # registration_concurrency at a time: never one by one, never more


def test_shutdown_does_not_wait_for_registrations(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_versions(settings, tmp_path, 2)

    async def stuck(self: InProcessBackend, name: str, version: int, path: Path, s: ServingOptions) -> None:
        await asyncio.sleep(60)  # a worker that takes its time to load

    monkeypatch.setattr(InProcessBackend, "register", stuck)
    started = time.monotonic()
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["pending"] == 2
    assert time.monotonic() - started < 10  # Ctrl+C or SIGTERM is not held up by a registration


def test_a_version_that_cannot_register_is_reported_and_retried(settings: Settings, tmp_path: Path) -> None:
    first, _ = store_versions(settings, tmp_path, 2)
    artifacts = settings.resolved_artifacts_dir / "sha256" / first["digest"][:2] / first["digest"]
    shutil.move(artifacts, tmp_path / "aside")
    settings = settings.model_copy(update={"supervise_interval_s": 0.2})
    with TestClient(create_app(settings)) as client:
        ready = wait_ready(client, timeout=30)  # one broken version does not make the service unready
        assert ready["failed"] == ["tiny v1"] and ready["pending"] == 0
        assert client.post("/predict/tiny?version=2", **IMAGE).status_code == 200
        assert client.post("/predict/tiny?version=1", **IMAGE).status_code == 503
        shutil.move(tmp_path / "aside", artifacts)
        wait_for(lambda: client.get("/readyz").json()["failed"] == [] or None, timeout=30)
        assert client.post("/predict/tiny?version=1", **IMAGE).status_code == 200


def test_giving_up_fails_healthz_and_stops_the_server(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def silent(self: InProcessBackend) -> bool:
        return False

    async def cannot_restart(self: InProcessBackend) -> bool:
        raise RuntimeError("port 8080 in use")

    monkeypatch.setattr(InProcessBackend, "ready", silent)
    monkeypatch.setattr(InProcessBackend, "exited", lambda self: True)
    monkeypatch.setattr(InProcessBackend, "restart", cannot_restart)
    stopped = threading.Event()
    app = create_app(settings.model_copy(update={"supervise_max_restarts": 2, "supervise_interval_s": 0.1}))
    app.state.on_give_up = stopped.set
    with TestClient(app) as client:
        assert stopped.wait(timeout=30)
        health = client.get("/healthz")
        assert health.status_code == 503 and "could not be restarted 2 times" in health.json()["detail"]
        assert client.get("/readyz").json()["state"] == "failed"


def predict_while(client: TestClient, running: threading.Event, url: str) -> list[tuple[float, float, int]]:
    """(start, end, status) of each request of 6 clients posting to ``url`` while ``running`` is set."""
    answers: list[tuple[float, float, int]] = []

    def one_client() -> None:
        while running.is_set():
            started = time.monotonic()
            status = client.post(url, **IMAGE).status_code
            answers.append((started, time.monotonic(), status))

    clients = [threading.Thread(target=one_client) for _ in range(6)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    return answers


def test_delete_under_load_answers_404_at_once(settings: Settings, tmp_path: Path) -> None:
    """In-flight requests complete or fail fast; once DELETE has answered every request gets 404."""
    store_versions(settings, tmp_path, 1)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        running, result = threading.Event(), {}
        running.set()
        load = threading.Thread(
            target=lambda: result.update(answers=predict_while(client, running, "/predict/tiny"))
        )
        load.start()
        time.sleep(1.0)
        assert client.delete("/models/tiny/versions/1").status_code == 204
        deleted = time.monotonic()
        time.sleep(1.0)
        running.clear()
        load.join(timeout=60)
    answers = result["answers"]
    assert {status for _, _, status in answers} == {200, 404}, sorted({s for _, _, s in answers})
    assert {status for start, _, status in answers if start > deleted} == {404}
    assert max(end - start for start, end, _ in answers) < 10


def test_a_version_being_stored_is_registered_once(
    settings: Settings, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version row exists a while before the conversion registers it; supervision rounds in that
    window (forced here: the insert returns only after two of them) must leave it to the conversion."""
    from service.store.metadata import MetadataStore

    registrations: list[tuple[str, int]] = []
    register, add_version = InProcessBackend.register, MetadataStore.add_version

    async def counted(
        self: InProcessBackend, name: str, version: int, path: Path, s: ServingOptions
    ) -> dict[str, float]:
        registrations.append((name, version))
        return await register(self, name, version, path, s)

    def slow_insert(self: MetadataStore, *args: Any, **kwargs: Any) -> Any:
        inserted = add_version(self, *args, **kwargs)
        time.sleep(0.5)  # five supervision rounds
        return inserted

    monkeypatch.setattr(InProcessBackend, "register", counted)
    monkeypatch.setattr(MetadataStore, "add_version", slow_insert)
    settings = settings.model_copy(update={"supervise_interval_s": 0.1})
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
        time.sleep(0.3)  # and a few rounds after it
    assert registrations == [("tiny", 1)]


def test_a_deleted_versions_mark_goes_with_its_row(settings: Settings, checkpoint: Path) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
        record = client.app.state.metadata.get_version("tiny", 1)  # type: ignore[attr-defined]
        assert client.delete("/models/tiny/versions/1").status_code == 204
        assert not client.app.state.versions.retired(record)  # type: ignore[attr-defined]
        assert client.post("/predict/tiny", **IMAGE).status_code == 404  # and it stays gone


@pytest.mark.databases
def test_replicas_on_one_database_follow_each_others_versions_and_aliases(
    settings: Settings, tmp_path: Path, bucket: str
) -> None:
    """Two replicas (one process each in production; two apps here) on one database and one bucket:
    a version converted on A is served by B (its supervisor registers it), an alias moved on B is
    followed by A within the version cache's lifetime, a version deleted on A is 404 on B and
    unloaded from B's backend."""
    shared = {"artifacts_url": f"s3://{bucket}/r", "supervise_interval_s": 0.1, "version_cache_s": 0.5}
    a = settings.model_copy(update={**shared, "data_dir": tmp_path / "a"})
    b = settings.model_copy(update={**shared, "data_dir": tmp_path / "b"})
    with TestClient(create_app(a)) as on_a, TestClient(create_app(b)) as on_b:
        for seed in (1, 2):
            form = convert_form(make_checkpoint(tmp_path / f"{seed}.pth", seed=seed))
            assert on_a.post("/convert", **form).status_code == 201

        def served_by_b(version: int) -> dict[str, Any] | None:
            answer = on_b.post(f"/predict/tiny?version={version}", **IMAGE)
            return answer.json() if answer.status_code == 200 else None

        for version in (1, 2):
            assert wait_for(lambda v=version: served_by_b(v), timeout=30) == (  # type: ignore[misc]
                on_a.post(f"/predict/tiny?version={version}", **IMAGE).json()
            )

        assert on_b.put("/models/tiny/aliases/production", json={"version": 1}).status_code == 200
        started = time.monotonic()

        def by_alias() -> int | None:
            answer = on_a.post("/predict/tiny?version=production", **IMAGE).json()
            return answer["version"] if answer["version"] == 1 else None

        wait_for(by_alias, timeout=10)
        assert time.monotonic() - started <= 0.5 + 0.5

        assert on_a.delete("/models/tiny/versions/2").status_code == 204
        started = time.monotonic()
        wait_for(lambda: on_b.post("/predict/tiny?version=2", **IMAGE).status_code == 404 or None, timeout=10)
        assert time.monotonic() - started <= 0.5 + 0.5  # the cache's lifetime, and a request
        backend_b = on_b.app.state.backend  # type: ignore[attr-defined]
        wait_for(lambda: ("tiny", 2) not in asyncio.run(backend_b.loaded()) or None, timeout=10)
        assert ("tiny", 1) in asyncio.run(backend_b.loaded())
