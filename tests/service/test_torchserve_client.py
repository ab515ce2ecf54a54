"""The TorchServe client's edges that need no TorchServe: requests racing a restart."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import torch

from service.backends.torchserve import TorchServeBackend
from service.config import Settings
from service.errors import BackendUnavailable


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
