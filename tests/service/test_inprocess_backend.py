"""The in-process backend's continuous batching: concurrent requests share forward passes, each gets
its own rows, a failure reaches every waiting request and the next batch still runs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from reparam_core.arch import build_train_model
from reparam_core.conversion import convert
from reparam_core.deploy import ServingModel, ServingOptions
from service.backends.inprocess import InProcessBackend
from service.errors import BackendUnavailable
from tests.helpers import SERVICE_SPEC as SPEC
from tests.helpers import randomize_


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    (convert(SPEC, randomize_(build_train_model(SPEC)).state_dict())).save(tmp_path / "m", export=False)
    return tmp_path / "m"


def test_concurrent_requests_are_batched_and_answered_in_order(
    artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = ServingModel.answer_each

    def recorded(self: ServingModel, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        calls.append(len(batches))
        return real(self, batches)

    monkeypatch.setattr(ServingModel, "answer_each", recorded)
    inputs = [torch.randn(1 + i % 2, 3, 32, 32) for i in range(9)]
    inputs.append(torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8))

    async def scenario() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        backend = InProcessBackend("cpu", max_batch=8)
        await backend.start()
        await backend.register("m", 1, artifacts, ServingOptions())
        together = await asyncio.gather(*(backend.predict("m", 1, x) for x in inputs))
        alone = [await backend.predict("m", 1, x) for x in inputs]
        await backend.stop()
        return list(together), alone

    together, alone = asyncio.run(scenario())
    assert max(calls) > 1 and sum(calls) == 2 * len(inputs)  # some requests shared a forward pass
    for x, a, b in zip(inputs, together, alone, strict=True):
        assert a.shape == (x.shape[0], 4) and torch.allclose(a, b, atol=1e-6)


def test_a_failing_batch_fails_its_requests_only(artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        backend = InProcessBackend("cpu")
        await backend.register("m", 1, artifacts, ServingOptions())
        served = backend.served("m", 1)
        assert served is not None
        real = served.answer_each
        monkeypatch.setattr(served, "answer_each", lambda batches: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            await backend.predict("m", 1, torch.randn(1, 3, 32, 32))
        monkeypatch.setattr(served, "answer_each", real)
        assert (await backend.predict("m", 1, torch.randn(1, 3, 32, 32))).shape == (1, 4)
        await backend.unregister("m", 1)
        with pytest.raises(BackendUnavailable, match="not loaded"):
            await backend.predict("m", 1, torch.randn(1, 3, 32, 32))

    asyncio.run(scenario())


def test_unloading_answers_requests_in_flight_and_queued(
    artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()

    async def scenario() -> list[BaseException | torch.Tensor]:
        backend = InProcessBackend("cpu", max_batch=1)
        await backend.register("m", 1, artifacts, ServingOptions())
        served = backend.served("m", 1)
        assert served is not None
        real = served.answer_each

        def slow(batches: list[torch.Tensor]) -> list[torch.Tensor]:
            started.set()
            release.wait(10)
            return real(batches)

        monkeypatch.setattr(served, "answer_each", slow)
        pending = [
            asyncio.ensure_future(backend.predict("m", 1, torch.randn(1, 3, 32, 32))) for _ in range(3)
        ]
        await asyncio.to_thread(started.wait, 10)  # the first request's batch is running
        await backend.unregister("m", 1)
        release.set()
        return await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)

    outcomes = asyncio.run(scenario())
    assert len(outcomes) == 3
    assert all(isinstance(o, BackendUnavailable) and "unloaded" in str(o) for o in outcomes)
