"""Service fixtures: an app on a temporary data folder with the in-process backend, a checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.helpers import make_checkpoint


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
