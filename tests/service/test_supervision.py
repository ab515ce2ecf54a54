"""A managed TorchServe under supervision, with the service run as users run it (``python -m
service.main`` in a subprocess): recovery when TorchServe is killed under load, a lost registration,
deletion under load, nothing left running once the service has ended, a leftover of a crash, two
services side by side, a port held by another program."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.backends.process_guard import group_gone
from service.backends.torchserve_process import find_java_home, torchserve_executable
from tests.helpers import (
    ROOT,
    SERVICE_SPEC,
    kill_processes_under,
    make_checkpoint,
    png_bytes,
    processes_under,
)
from tests.helpers import wait_for as wait_until

pytestmark = pytest.mark.skipif(
    find_java_home() is None or torchserve_executable() is None,
    reason="needs Java and the torchserve package",
)
RECOVERY_S = 60  # TorchServe killed -> predictions answered again (about 5 s here, 6-13 s under heavier load)
LOST_S = 30  # registration removed behind the service's back -> registered again (about 2-4 s here)
GONE_S = 15  # the service ended -> not one process of its TorchServe left
IMAGE = png_bytes()
TORCHSERVE_APIS = ("INFERENCE", "MANAGEMENT", "METRICS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``python -m service.main`` on a data folder, with a managed TorchServe on free ports."""

    def __init__(self, folder: Path, **env: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.data, self.log_path = folder, folder / "data", folder / "service.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),  # the service and its TorchServe workers import this checkout
            "REPARAM_DATA_DIR": str(self.data),
            "REPARAM_PORT": str(free_port()),
            "REPARAM_BACKEND": "torchserve",
            "REPARAM_DEVICE": "cpu",
            "REPARAM_EXPORT_PROGRAM": "false",
            "REPARAM_WORKERS_PER_MODEL": "1",
            "REPARAM_BATCH_SIZE": "4",
            "REPARAM_SUPERVISE_INTERVAL_S": "1",
            **{f"REPARAM_TORCHSERVE_{api}_PORT": str(free_port()) for api in TORCHSERVE_APIS},
            **env,
        }
        self.env.pop("REPARAM_API_TOKEN", None)
        self.url = f"http://127.0.0.1:{self.env['REPARAM_PORT']}"
        self.management_url = f"http://127.0.0.1:{self.env['REPARAM_TORCHSERVE_MANAGEMENT_PORT']}"
        self.process: subprocess.Popen[bytes] | None = None

    def torchserve_ports(self) -> dict[str, str]:
        return {
            f"REPARAM_TORCHSERVE_{api}_PORT": self.env[f"REPARAM_TORCHSERVE_{api}_PORT"]
            for api in TORCHSERVE_APIS
        }

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.main"], cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30)

    def predict(self, query: str = "") -> int:
        url = f"{self.url}/predict/tiny{query}"
        return httpx.post(url, content=IMAGE, headers={"Content-Type": "image/png"}, timeout=90).status_code

    def answers(self) -> bool | None:
        assert self.process is not None and self.process.poll() is None, self.log()
        try:
            return self.get("/healthz").status_code == 200 or None
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        wait_until(self.answers, timeout=timeout)

        def ready() -> dict[str, Any] | None:
            response = self.get("/readyz")
            return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]

        return wait_until(ready, timeout=timeout)

    def convert(self, seed: int) -> int:
        checkpoint = make_checkpoint(self.folder / f"{seed}.pth", seed=seed)
        files = {"checkpoint": (checkpoint.name, checkpoint.read_bytes(), "application/octet-stream")}
        data = {"spec": json.dumps(SERVICE_SPEC), "name": "tiny"}
        response = httpx.post(f"{self.url}/convert", files=files, data=data, timeout=300)
        assert response.status_code == 201, response.text
        return int(response.json()["version"])

    def torchserve(self) -> dict[str, int]:
        """The guard's pid and TorchServe's process group, from the pid file."""
        return json.loads((self.data / "torchserve" / "torchserve.pid").read_text())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def services(folder: Path) -> Iterator[Callable[..., Service]]:
    """Start services under ``folder``; whatever happens, nothing of theirs outlives the test."""
    started: list[Service] = []

    def start(name: str = "service", **env: str) -> Service:
        started.append(Service(folder / name, **env).start())
        return started[-1]

    try:
        yield start
    finally:
        for service in started:
            service.stop()
        kill_processes_under(folder)


@pytest.fixture()
def start(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    with services(tmp_path) as start_service:
        yield start_service


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the tests that leave it serving: two versions of ``tiny``."""
    with services(tmp_path_factory.mktemp("managed")) as start_service:
        service = start_service()
        service.wait_ready()
        assert [service.convert(seed) for seed in (0, 1)] == [1, 2]
        yield service


class Load:
    """Clients posting an image in a loop; ``answers``: (start, end, status) of every request."""

    def __init__(self, service: Service, query: str, clients: int = 8) -> None:
        self.service, self.query = service, query
        self.answers: list[tuple[float, float, int]] = []
        self.running = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        while self.running.is_set():
            started = time.monotonic()
            try:
                status = self.service.predict(self.query)
            except httpx.TransportError:
                status = 0  # the service itself failed to answer
            self.answers.append((started, time.monotonic(), status))

    def first_after(self, moment: float, status: int) -> float | None:
        ends = [end for start, end, s in self.answers if start > moment and s == status]
        return min(ends) if ends else None

    def __enter__(self) -> Load:
        self.running.set()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.running.clear()
        for thread in self.threads:
            thread.join(timeout=120)


def test_killed_torchserve_recovers_by_itself_under_load(managed: Service) -> None:
    old = managed.torchserve()
    with Load(managed, "?version=2") as load:
        wait_until(lambda: load.first_after(0, 200), timeout=30)
        killed = time.monotonic()
        os.killpg(old["pgid"], signal.SIGKILL)
        recovered = wait_until(lambda: load.first_after(killed, 200), timeout=RECOVERY_S)
        ready = managed.wait_ready(timeout=RECOVERY_S)
        assert ready["pending"] == 0 and ready["failed"] == []
    assert recovered - killed < RECOVERY_S
    statuses = {status for _, _, status in load.answers}
    assert statuses <= {200, 503} and 503 in statuses, statuses  # the outage is 503, nothing else
    assert managed.torchserve()["pgid"] != old["pgid"]
    assert managed.predict("?version=1") == 200  # every stored version registered again
    log = managed.log()
    assert "ERROR reparam.supervisor: backend down: the torchserve backend" in log
    assert "TorchServe has exited: restarted in" in log


def test_a_lost_registration_is_registered_again(managed: Service) -> None:
    assert httpx.delete(f"{managed.management_url}/models/tiny-v1/1", timeout=30).status_code == 200
    lost = time.monotonic()
    wait_until(lambda: managed.predict("?version=1") == 200 or None, timeout=LOST_S)
    assert time.monotonic() - lost < LOST_S
    assert "tiny v1 lost its registration with the backend: registering it again" in managed.log()


def test_delete_under_load_answers_404_at_once(managed: Service) -> None:
    """TorchServe drops the queued requests of a model it unregisters: none may wait for a timeout."""
    with Load(managed, "?version=2") as load:
        wait_until(lambda: load.first_after(0, 200), timeout=30)
        response = httpx.delete(f"{managed.url}/models/tiny/versions/2", timeout=60)
        assert response.status_code == 204
        deleted = time.monotonic()
        time.sleep(2)
    statuses = {status for _, _, status in load.answers}
    assert statuses == {200, 404}, statuses
    assert {status for start, _, status in load.answers if start > deleted} == {404}
    assert max(end - start for start, end, _ in load.answers) < 10


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_nothing_of_torchserve_outlives_the_service(
    start: Callable[..., Service], sig: signal.Signals
) -> None:
    service = start()
    service.wait_ready()
    group = service.torchserve()["pgid"]
    assert len(processes_under(service.data)) >= 3  # guard, launcher, JVM
    assert service.process is not None
    service.process.send_signal(sig)
    service.process.wait(timeout=60)
    assert group_gone(group, timeout=GONE_S), f"left running: {processes_under(service.data)}"
    wait_until(lambda: processes_under(service.data) == [] or None, timeout=GONE_S)  # the guard, last


def test_a_leftover_of_a_crash_is_killed_at_the_next_start(start: Callable[..., Service]) -> None:
    """Service and guard killed at once: TorchServe lives on, until the next start finds and kills it.
    That start opens its port at once and registers the stored versions in the background."""
    first = start("first")
    first.wait_ready()
    assert [first.convert(seed) for seed in (0, 1)] == [1, 2]
    leftover = first.torchserve()
    assert first.process is not None
    os.kill(leftover["guard"], signal.SIGKILL)
    first.process.kill()
    first.process.wait()
    time.sleep(1)
    assert not group_gone(leftover["pgid"], timeout=0)
    second = start("first", **first.torchserve_ports())  # same data folder, same TorchServe ports
    wait_until(second.answers, timeout=120)
    waiting = second.get("/readyz")
    assert waiting.status_code == 503 and waiting.json()["pending"] >= 1, waiting.json()
    assert second.wait_ready()["pending"] == 0
    assert group_gone(leftover["pgid"], timeout=0)
    assert "killing a TorchServe left running by an earlier run" in second.log()
    assert second.predict("?version=1") == 200 and second.predict("?version=2") == 200


def test_two_services_with_managed_torchserve_side_by_side(start: Callable[..., Service]) -> None:
    """gRPC ports are the system's choice unless configured: nothing collides on 7070/7071."""
    both = [start("one"), start("two")]
    for service in both:
        assert service.wait_ready()["backend"] == "torchserve"
        service.convert(seed=0)
    assert [service.predict() for service in both] == [200, 200]
    assert all(service.process is not None and service.process.poll() is None for service in both)


def test_explicit_torchserve_on_a_busy_port_stops_the_service(start: Callable[..., Service]) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        busy = other.getsockname()[1]
        service = start(REPARAM_TORCHSERVE_INFERENCE_PORT=str(busy))
        assert service.process is not None
        assert service.process.wait(timeout=120) != 0
    log = service.log()
    assert f"port {busy} (REPARAM_TORCHSERVE_INFERENCE_PORT) is in use by another program" in log
    assert "Traceback" not in log and processes_under(service.data) == []
