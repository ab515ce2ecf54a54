"""Service fixtures: an app on a temporary data folder with the in-process backend, a checkpoint;
TorchServe workers and service subprocesses import this checkout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
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
