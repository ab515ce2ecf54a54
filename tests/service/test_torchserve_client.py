"""The TorchServe client's edges that need no TorchServe: requests racing a restart, a refused
registration."""

from __future__ import annotations

import asyncio
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
        return (404, "") if method == "DELETE" else (507, "worker could not start")

    monkeypatch.setattr(backend, "_management", refuse)

    async def register() -> None:
        try:
            await backend.register("tiny", 1, artifacts, ServingOptions())
        finally:
            await backend.stop()

    with pytest.raises(BackendUnavailable, match="507 worker could not start"):
        asyncio.run(register())
    assert list(settings.resolved_model_store.iterdir()) == []  # no model folder, no scratch


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
