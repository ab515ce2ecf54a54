"""The worker policy: which versions stay warm; the TorchServe client registering cold versions
without workers, scaling one up once for the requests that wait for it, and idle ones down (a fake
management API); the supervisor and alias moves applying it (in-process backend, recorded)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from reparam_core import convert
from reparam_core.deploy import ServingOptions
from service.app import create_app
from service.backends.inprocess import InProcessBackend
from service.backends.torchserve import TorchServeBackend
from service.backends.worker_policy import split_warm_cold
from service.config import Settings
from service.errors import BackendUnavailable
from service.torchserve_handler import wire
from tests.helpers import SERVICE_SPEC, convert_form, make_checkpoint, wait_for, wait_ready


def test_the_latest_of_each_model_and_the_aliased_versions_stay_warm() -> None:
    stored = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 7)]
    warm, cold = split_warm_cold(Settings(), stored, {("a", 1), ("b", 9)})  # b v9: deleted meanwhile
    assert warm == {("a", 3), ("a", 1), ("b", 7)} and cold == {("a", 2), ("b", 1)}
    warm, cold = split_warm_cold(Settings(warm_versions="all"), stored, set())
    assert warm == set(stored) and cold == set()


class FakeTorchServe:
    """TorchServe's management API as the client uses it: registrations with their workers; a
    scale-up takes ``start_s`` (a worker's start)."""

    def __init__(self, start_s: float = 0.2) -> None:
        self.workers: dict[str, int] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.start_s = start_s

    async def management(self, method: str, path: str, timeout: float, params: Any = None) -> tuple[int, str]:
        params = params or {}
        self.calls.append((method, path, params))
        model = path.split("/")[2] if path.count("/") >= 2 else params.get("model_name", "")
        if method == "POST":
            self.workers[model] = int(params["initial_workers"])
            return 200, "{}"
        if method == "DELETE":
            return (200, "{}") if self.workers.pop(model, None) is not None else (404, "")
        if method == "GET" and path == f"/models/{model}":
            return (200, "[]") if model in self.workers else (404, "")
        if method == "PUT":
            if model not in self.workers:
                return 404, "no such model"
            wanted = int(params["min_worker"])
            if wanted > self.workers[model]:
                await asyncio.sleep(self.start_s)
            self.workers[model] = wanted
            return 200, "{}"
        raise AssertionError(f"unexpected {method} {path}")

    def scales(self, model: str) -> list[int]:
        return [
            int(p["min_worker"]) for m, path, p in self.calls if m == "PUT" and path == f"/models/{model}"
        ]


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    folder = tmp_path / "artifacts"
    convert(SERVICE_SPEC, make_checkpoint(tmp_path / "c.pth"), device="cpu").save(folder, export=False)
    return folder


def backend_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTorchServe, **settings: Any
) -> tuple[TorchServeBackend, list[str]]:
    """The client with the fake management API; the list records which model each request reached."""
    options = {"workers_per_model": 2, "idle_unload_s": 60.0, **settings}
    backend = TorchServeBackend(
        Settings(data_dir=tmp_path / "data", torchserve_url="http://127.0.0.1:9", **options)
    )
    monkeypatch.setattr(backend, "_management", fake.management)
    served: list[str] = []

    async def post(model: str, body: bytes, name: str, version: int) -> bytes:
        assert fake.workers[model] > 0, f"{model} asked for with no worker"
        served.append(model)
        return wire.pack(torch.ones(1, 10) / 10)

    monkeypatch.setattr(backend, "_post", post)
    return backend, served


def test_a_cold_version_registers_without_workers_and_its_first_requests_share_one_scale_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts: Path
) -> None:
    fake = FakeTorchServe()
    backend, served = backend_with(tmp_path, monkeypatch, fake)

    async def run() -> None:
        try:
            await backend.place_workers(warm={("tiny", 2)}, cold={("tiny", 1)})
            for version in (1, 2):
                await backend.register("tiny", version, artifacts, ServingOptions())
            assert fake.workers == {"tiny-v1": 0, "tiny-v2": 2}
            pixels = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
            answers = await asyncio.gather(*(backend.predict("tiny", 1, pixels) for _ in range(5)))
            assert all(a.shape == (1, 10) for a in answers)
            assert fake.scales("tiny-v1") == [2]  # one scale-up, five requests waiting for it
            assert fake.workers["tiny-v1"] == 2 and served.count("tiny-v1") == 5
            await backend.predict("tiny", 2, pixels)
            assert fake.scales("tiny-v2") == []  # warm: straight to its workers
        finally:
            await backend.stop()

    asyncio.run(run())


def test_idle_cold_versions_are_scaled_down_and_come_back_on_demand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts: Path
) -> None:
    fake = FakeTorchServe()
    backend, _ = backend_with(tmp_path, monkeypatch, fake, idle_unload_s=2.0)
    pixels = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)

    async def run() -> None:
        try:
            for version in (1, 2):  # registered before the policy knew them: warm
                await backend.register("tiny", version, artifacts, ServingOptions())
            assert fake.workers == {"tiny-v1": 2, "tiny-v2": 2}
            await backend.place_workers(warm={("tiny", 2)}, cold={("tiny", 1)})
            assert fake.workers["tiny-v1"] == 2  # not idle for idle_unload_s yet
            await asyncio.sleep(2.1)
            await backend.place_workers(warm={("tiny", 2)}, cold={("tiny", 1)})
            assert fake.workers == {"tiny-v1": 0, "tiny-v2": 2}
            await backend.predict("tiny", 1, pixels)  # scaled up again for this request
            assert fake.scales("tiny-v1") == [0, 2]
            await backend.place_workers(warm={("tiny", 2)}, cold={("tiny", 1)})
            assert fake.workers["tiny-v1"] == 2  # just used
            await asyncio.sleep(2.1)
            await backend.place_workers(warm={("tiny", 2)}, cold={("tiny", 1)})
            assert fake.workers["tiny-v1"] == 0
            backend.prewarm("tiny", 1)  # an alias moved to it
            await wait_async(lambda: fake.workers["tiny-v1"] == 2)
            await backend.unregister("tiny", 1)
            await backend.place_workers(warm={("tiny", 2)}, cold=set())
            assert "tiny-v1" not in fake.workers
        finally:
            await backend.stop()

    asyncio.run(run())


def test_a_scale_up_that_fails_answers_503_and_the_next_request_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts: Path
) -> None:
    fake = FakeTorchServe()
    backend, _ = backend_with(tmp_path, monkeypatch, fake)
    refuse = True
    management = fake.management

    async def flaky(method: str, path: str, timeout: float, params: Any = None) -> tuple[int, str]:
        if method == "PUT" and refuse:
            return 507, "worker could not start"
        return await management(method, path, timeout, params)

    monkeypatch.setattr(backend, "_management", flaky)
    pixels = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)

    async def run() -> None:
        nonlocal refuse
        try:
            await backend.place_workers(warm=set(), cold={("tiny", 1)})
            await backend.register("tiny", 1, artifacts, ServingOptions())
            with pytest.raises(BackendUnavailable, match="could not scale tiny-v1 to 2 workers"):
                await backend.predict("tiny", 1, pixels)
            refuse = False
            assert (await backend.predict("tiny", 1, pixels)).shape == (1, 10)
        finally:
            await backend.stop()

    asyncio.run(run())


async def wait_async(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_the_supervisor_applies_the_policy_and_an_alias_move_prewarms(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed: list[tuple[set[tuple[str, int]], set[tuple[str, int]]]] = []
    prewarmed: list[tuple[str, int]] = []

    async def place(self: InProcessBackend, warm: set[Any], cold: set[Any]) -> None:
        placed.append((warm, cold))

    monkeypatch.setattr(InProcessBackend, "place_workers", place)
    monkeypatch.setattr(
        InProcessBackend, "prewarm", lambda self, name, version: prewarmed.append((name, version))
    )
    settings = settings.model_copy(update={"supervise_interval_s": 0.1})
    with TestClient(create_app(settings)) as client:
        for seed in range(3):
            form = convert_form(make_checkpoint(tmp_path / f"{seed}.pth", seed=seed))
            assert client.post("/convert", **form).status_code == 201
        wait_ready(client)
        wait_for(lambda: (bool(placed) and placed[-1] == ({("tiny", 3)}, {("tiny", 1), ("tiny", 2)})) or None)
        assert client.put("/models/tiny/aliases/production", json={"version": 1}).status_code == 200
        assert prewarmed == [("tiny", 1)]
        wait_for(lambda: placed[-1] == ({("tiny", 3), ("tiny", 1)}, {("tiny", 2)}) or None)


def test_a_request_waiting_for_a_scale_up_that_a_stop_cancels_is_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts: Path
) -> None:
    fake = FakeTorchServe(start_s=30.0)
    backend, _ = backend_with(tmp_path, monkeypatch, fake)

    async def run() -> None:
        await backend.place_workers(warm=set(), cold={("tiny", 1)})
        await backend.register("tiny", 1, artifacts, ServingOptions())
        waiting = asyncio.ensure_future(
            backend.predict("tiny", 1, torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
        )
        await wait_async(lambda: fake.scales("tiny-v1") == [2])
        await backend.stop()  # a restart: the scale-up is cancelled
        with pytest.raises(BackendUnavailable, match="unloaded while it started"):
            await waiting

    asyncio.run(run())
