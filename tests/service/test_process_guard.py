"""Nothing the service starts outlives it: the guard between the service and TorchServe, the pid
file that finds a leftover of a crash, and ports held by another program (no Java needed here)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.backends.process_guard import group_gone
from service.backends.torchserve_process import GUARD, TorchServeProcess, check_ports_free, write_config
from service.config import Settings
from tests.helpers import kill_processes_under, processes_under, wait_for

# A stand-in for TorchServe: a process group of three (launcher + two "workers").
FAKE_TORCHSERVE = ["sh", "-c", "sleep 300 & sleep 300 & wait"]


@pytest.fixture()
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    kill_processes_under(tmp_path)


def start_guard(folder: Path, command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    pid_file = folder / "torchserve.pid"
    guard = subprocess.Popen(
        [sys.executable, str(GUARD), str(pid_file), "--", *command],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    record = wait_for(lambda: json.loads(pid_file.read_text()) if pid_file.exists() else None, timeout=10)
    assert record["guard"] == guard.pid
    wait_for(lambda: len(members(record["pgid"])) >= 3 or None, timeout=10)
    return guard, record["pgid"]


def members(group: int) -> list[int]:
    from service.backends.torchserve_process import group_members

    return group_members(group)


def test_the_group_dies_with_the_service_even_on_sigkill(folder: Path) -> None:
    """The "service" here is a Python process holding the guard's pipe; SIGKILL closes the pipe."""
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, {str(GUARD)!r}, {str(folder / 'torchserve.pid')!r}, '--', "
        f"*{FAKE_TORCHSERVE!r}], stdin=subprocess.PIPE, start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    service = subprocess.Popen([sys.executable, "-c", script])
    pid_file = folder / "torchserve.pid"
    group = wait_for(
        lambda: json.loads(pid_file.read_text())["pgid"] if pid_file.exists() else None, timeout=10
    )
    wait_for(lambda: len(members(group)) >= 3 or None, timeout=10)
    service.send_signal(signal.SIGKILL)
    service.wait()
    assert group_gone(group, timeout=10), f"left running: {members(group)}"
    wait_for(lambda: not pid_file.exists() or None, timeout=5)


def test_closing_the_pipe_stops_the_group_and_the_guard(folder: Path) -> None:
    guard, group = start_guard(folder, FAKE_TORCHSERVE)
    assert guard.stdin is not None
    guard.stdin.close()
    assert guard.wait(timeout=15) == 128 + signal.SIGTERM  # the launcher's status, passed on
    assert group_gone(group, timeout=1)


def test_a_launcher_that_dies_takes_its_workers_along(folder: Path) -> None:
    """SIGKILL of the launcher alone (as if TorchServe crashed): its workers do not stay behind."""
    guard, group = start_guard(folder, FAKE_TORCHSERVE)
    os.kill(group, signal.SIGKILL)
    assert guard.wait(timeout=15) == 128 + signal.SIGKILL
    assert group_gone(group, timeout=1)
    assert not (folder / "torchserve.pid").exists()


def test_sigterm_to_the_guard_stops_the_group_and_ctrl_c_does_not(folder: Path) -> None:
    guard, group = start_guard(folder, FAKE_TORCHSERVE)
    guard.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert guard.poll() is None and len(members(group)) >= 3
    guard.send_signal(signal.SIGTERM)
    guard.wait(timeout=15)
    assert group_gone(group, timeout=1)


def leftover(folder: Path, ours: bool) -> int:
    """A process group left by a crash: its parent, guard and service gone (so init reaps it),
    running from ``folder`` or not."""
    marker = str(folder / "torchserve" / "tmp" / "x") if ours else "elsewhere"
    orphaning = f"setsid sh -c 'sleep 300 & wait' {marker} >/dev/null 2>&1 & echo $!"
    group = int(subprocess.run(["sh", "-c", orphaning], capture_output=True, text=True, check=True).stdout)
    (folder / "torchserve").mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (folder / "torchserve" / "torchserve.pid").write_text(json.dumps({"guard": dead.pid, "pgid": group}))
    wait_for(lambda: len(members(group)) >= 2 or None, timeout=10)
    return group


def test_a_leftover_of_this_data_folder_is_killed_at_start(folder: Path) -> None:
    group = leftover(folder, ours=True)
    TorchServeProcess(Settings(data_dir=folder)).kill_leftover()
    assert group_gone(group, timeout=5)
    assert not (folder / "torchserve" / "torchserve.pid").exists()


def test_a_group_that_is_not_ours_is_left_alone(folder: Path) -> None:
    group = leftover(folder, ours=False)
    try:
        TorchServeProcess(Settings(data_dir=folder)).kill_leftover()
        assert len(members(group)) >= 2  # the pid was reused by someone else: not ours to kill
        assert not (folder / "torchserve" / "torchserve.pid").exists()
    finally:
        os.killpg(group, signal.SIGKILL)


def test_a_data_folder_in_use_by_a_running_service_is_refused(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.backends.torchserve_process.GRACE_S", 0.5)  # how long a dying guard gets
    (folder / "torchserve").mkdir()
    guard, _ = start_guard(folder / "torchserve", FAKE_TORCHSERVE)
    process = TorchServeProcess(Settings(data_dir=folder))
    with pytest.raises(RuntimeError, match="belongs to a running service"):
        process.kill_leftover()
    assert guard.poll() is None
    assert processes_under(folder)


def test_a_port_held_by_another_program_is_named(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(
            RuntimeError, match=f"port {port} \\(REPARAM_TORCHSERVE_METRICS_PORT\\) is in use"
        ):
            check_ports_free(Settings(data_dir=tmp_path, torchserve_metrics_port=port))


def test_grpc_listens_on_loopback_on_a_port_of_the_systems_choice(tmp_path: Path) -> None:
    config = write_config(Settings(data_dir=tmp_path), tmp_path).read_text().splitlines()
    assert {"grpc_inference_address=127.0.0.1", "grpc_inference_port=0", "grpc_management_port=0"} <= set(
        config
    )
    chosen = write_config(Settings(data_dir=tmp_path, torchserve_grpc_inference_port=7443), tmp_path)
    assert "grpc_inference_port=7443" in chosen.read_text().splitlines()
