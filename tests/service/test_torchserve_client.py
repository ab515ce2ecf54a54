"""The TorchServe client's edges that need no TorchServe: requests racing a restart, a refused
registration, registration shared by replicas (idempotent), which registrations are ours."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from reparam_core import convert
from reparam_core.deploy import ServingOptions
from service.backends.torchserve import TorchServeBackend
from service.config import Settings
from service.errors import BackendUnavailable
from tests.helpers import SERVICE_SPEC, make_checkpoint


def test_a_prediction_racing_a_restart_is_503_not_500(tmp_path: Path) -> None:
    """``stop`` (part of every restart) closes the HTTP session: a prediction starting meanwhile must
    not meet the closed session (RuntimeError, a 500) but fail as the backend being down."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # nothing listens there

    async def race() -> None:
        backend = TorchServeBackend(Settings(data_dir=tmp_path, torchserve_url=url))
        assert not backend.session.closed
        stopping = asyncio.ensure_future(backend.stop())
        with pytest.raises(BackendUnavailable):
            await backend.predict("m", 1, torch.zeros(1, 3, 4, 4))
        await stopping
        await backend.stop()

    asyncio.run(race())


def test_a_refused_registration_leaves_no_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    artifacts = tmp_path / "artifacts"
    convert(SERVICE_SPEC, make_checkpoint(tmp_path / "c.pth"), device="cpu").save(artifacts, export=False)
    settings = Settings(data_dir=tmp_path / "data", torchserve_url="http://127.0.0.1:9")
    backend = TorchServeBackend(settings)

    async def refuse(method: str, path: str, timeout: float, params: Any = None) -> tuple[int, str]:
        return (404, "") if method in ("GET", "DELETE") else (507, "worker could not start")

    monkeypatch.setattr(backend, "_management", refuse)

    async def register() -> None:
        try:
            await backend.register("tiny", 1, artifacts, ServingOptions())
        finally:
            await backend.stop()

    with pytest.raises(BackendUnavailable, match="507 worker could not start"):
        asyncio.run(register())
    assert list(settings.resolved_model_store.iterdir()) == []  # no model folder, no scratch


class SharedTorchServe:
    """TorchServe's management API as replicas sharing it see it: what is registered, and the calls."""

    def __init__(self, registered: set[str], conflict: bool = False) -> None:
        self.registered, self.conflict = registered, conflict
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, method: str, path: str, timeout: float, params: Any = None) -> tuple[int, str]:
        self.calls.append((method, path))
        model = (params or {}).get("model_name") or path.split("/")[2]
        if method == "GET":
            return (200, "[]") if model in self.registered else (404, "")
        if method == "DELETE":
            self.registered.discard(model)
            return 200, ""
        if self.conflict:  # another replica's POST got there first
            self.registered.add(model)
            return 409, f"Model version 1 is already registered for model {model}"
        self.registered.add(model)
        return 200, ""


def register_with(tmp_path: Path, torchserve: SharedTorchServe) -> tuple[Settings, dict[str, float]]:
    artifacts = tmp_path / "artifacts"
    if not artifacts.exists():
        convert(SERVICE_SPEC, make_checkpoint(tmp_path / "c.pth"), device="cpu").save(artifacts, export=False)
    settings = Settings(data_dir=tmp_path / "data", torchserve_url="http://127.0.0.1:9")
    backend = TorchServeBackend(settings)
    backend._management = torchserve  # type: ignore[method-assign]

    async def register() -> dict[str, float]:
        try:
            return await backend.register("tiny", 1, artifacts, ServingOptions())
        finally:
            await backend.stop()

    return settings, asyncio.run(register())


def test_registration_is_idempotent_for_replicas_sharing_one_torchserve(tmp_path: Path) -> None:
    torchserve = SharedTorchServe(set())
    settings, _ = register_with(tmp_path, torchserve)  # replica A registers tiny-v1
    folder = settings.resolved_model_store / "tiny-v1"
    assert torchserve.calls == [("GET", "/models/tiny-v1"), ("POST", "/models")]
    inode = folder.stat().st_ino

    torchserve.calls.clear()  # replica B (same model store) finds it registered: touches nothing
    register_with(tmp_path, torchserve)
    assert torchserve.calls == [("GET", "/models/tiny-v1")]
    assert folder.stat().st_ino == inode


def test_a_registration_racing_another_replicas_is_kept(tmp_path: Path) -> None:
    """Both replicas found the version unregistered; the second POST is refused (409): it is
    registered all the same, and its folder stays."""
    torchserve = SharedTorchServe(set(), conflict=True)
    settings, steps = register_with(tmp_path, torchserve)
    assert torchserve.calls == [("GET", "/models/tiny-v1"), ("POST", "/models")]
    assert set(steps) == {"archive", "register"}
    assert (settings.resolved_model_store / "tiny-v1" / "MAR-INF" / "MANIFEST.json").is_file()


def test_a_registration_whose_folder_is_gone_is_made_again(tmp_path: Path) -> None:
    torchserve = SharedTorchServe({"tiny-v1"})  # registered, but its folder was removed
    settings, _ = register_with(tmp_path, torchserve)
    assert torchserve.calls == [
        ("GET", "/models/tiny-v1"),
        ("DELETE", "/models/tiny-v1/1"),
        ("POST", "/models"),
    ]
    assert (settings.resolved_model_store / "tiny-v1" / "MAR-INF" / "MANIFEST.json").is_file()


def test_only_registrations_from_our_model_store_are_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An external TorchServe may serve other models, even ones named like ours."""
    settings = Settings(data_dir=tmp_path / "data", torchserve_url="http://127.0.0.1:9")
    backend = TorchServeBackend(settings)
    (settings.resolved_model_store / "ours-v2" / "MAR-INF").mkdir(parents=True)
    (settings.resolved_model_store / "ours-v2" / "MAR-INF" / "MANIFEST.json").write_text("{}")
    names = ["ours-v2", "theirs-v3", "resnet"]

    async def management(method: str, path: str, timeout: float, params: Any = None) -> tuple[int, str]:
        if path == "/models":
            return 200, json.dumps({"models": [{"modelName": n} for n in names]})
        return 200, json.dumps([{"minWorkers": 1, "workers": [{"status": "READY"}]}])

    monkeypatch.setattr(backend, "_management", management)

    async def loaded() -> dict[tuple[str, int], bool]:
        try:
            return await backend.loaded()
        finally:
            await backend.stop()

    assert asyncio.run(loaded()) == {("ours", 2): True}


def test_an_unreachable_torchserve_is_a_plain_sentence_and_the_cause_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # nothing listens there

    async def predict() -> None:
        backend = TorchServeBackend(Settings(data_dir=tmp_path, torchserve_url=url))
        try:
            await backend.predict("m", 1, torch.zeros(1, 3, 4, 4))
        finally:
            await backend.stop()

    with caplog.at_level("WARNING", logger="reparam.torchserve"), pytest.raises(BackendUnavailable) as raised:
        asyncio.run(predict())
    assert raised.value.detail == "the inference backend is unreachable"
    assert "Error" in caplog.text  # the exception's repr goes to the log, not to the client
