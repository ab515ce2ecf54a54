"""Which backend serves: TorchServe when Java and torchserve exist, else in-process with a log line."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.backends import select_backend
from service.backends.inprocess import InProcessBackend
from service.backends.torchserve import TorchServeBackend
from service.backends.torchserve_process import find_java_home, torchserve_executable
from service.config import Settings
from tests.helpers import wait_ready


def test_without_java_the_in_process_backend_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("service.backends.torchserve_process.find_java_home", lambda: None)
    with caplog.at_level(logging.WARNING, logger="reparam.backend"):
        backend = select_backend(Settings(data_dir=tmp_path, backend="auto"))
    assert isinstance(backend, InProcessBackend)
    assert "falling back to the in-process backend" in caplog.text


def test_explicit_choices(tmp_path: Path) -> None:
    assert isinstance(select_backend(Settings(data_dir=tmp_path, backend="inprocess")), InProcessBackend)
    external = select_backend(Settings(data_dir=tmp_path, torchserve_url="http://torchserve:8080"))
    assert isinstance(external, TorchServeBackend) and external.process is None
    assert external.management_url == "http://torchserve:8080"


def test_torchserve_failing_to_start_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("service.backends.torchserve_process.find_java_home", lambda: "/opt/java")
    monkeypatch.setattr(
        "service.backends.torchserve_process.torchserve_executable", lambda: "/bin/torchserve"
    )

    async def broken_start(self: TorchServeBackend) -> None:
        raise RuntimeError("port 8080 in use")

    monkeypatch.setattr(TorchServeBackend, "start", broken_start)
    with (
        caplog.at_level(logging.ERROR, logger="reparam.backend"),
        TestClient(create_app(Settings(data_dir=tmp_path, backend="auto"))) as client,
    ):
        assert wait_ready(client)["backend"] == "inprocess"
    assert "TorchServe cannot start (port 8080 in use): falling back" in caplog.text


@pytest.mark.skipif(
    find_java_home() is None or torchserve_executable() is None, reason="needs Java and torchserve"
)
def test_auto_falls_back_loudly_when_a_port_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A port held by another program is never adopted: ``auto`` serves in-process and says why."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        settings = Settings(data_dir=tmp_path, backend="auto", torchserve_inference_port=taken)
        with (
            caplog.at_level(logging.ERROR, logger="reparam.backend"),
            TestClient(create_app(settings)) as client,
        ):
            assert wait_ready(client)["backend"] == "inprocess"
    assert f"port {taken} (REPARAM_TORCHSERVE_INFERENCE_PORT) is in use by another program" in caplog.text
    assert "falling back to the in-process backend" in caplog.text
