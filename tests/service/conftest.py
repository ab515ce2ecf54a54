"""Service fixtures: an app on a temporary data folder with the in-process backend, a checkpoint,
the same app behind a real uvicorn server on loopback (for what a test client cannot show);
TorchServe workers and service subprocesses import this checkout."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.main import server_config
from tests.helpers import ROOT, make_checkpoint


@pytest.fixture(autouse=True)
def subprocesses_import_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchServe's workers are processes of their own (started with the environment's Python):
    without this they could import an installed copy of reparam_core and service."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", backend="inprocess", device="cpu", export_program=False)


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "tiny.pth")


@contextlib.contextmanager
def _serving(settings: Settings) -> Iterator[tuple[str, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(server_config(settings.model_copy(update={"host": "127.0.0.1", "port": port})))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture()
def live_server() -> Callable[[Settings], contextlib.AbstractContextManager[tuple[str, int]]]:
    """``with live_server(settings) as (host, port):`` the app served by uvicorn on loopback."""
    return _serving
