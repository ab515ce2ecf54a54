"""The watchdog between the service and its TorchServe: TorchServe never outlives the service.

``python process_guard.py PID_FILE -- COMMAND...`` (run by path: it imports the standard library
only) starts COMMAND as the leader of a new process group, writes ``{"guard": pid, "pgid": pgid}``
to PID_FILE and reads its stdin, a pipe from the service. The kernel closes that pipe whenever the
service ends, SIGKILL and out-of-memory kills included; at end of file, or on SIGTERM, the guard
stops the group (SIGTERM, then SIGKILL after a grace period). When COMMAND exits by itself the
guard kills what is left of its group (workers), removes PID_FILE and exits with COMMAND's status.
Ctrl+C is ignored: the service decides when TorchServe stops. On Linux the guard is a child
subreaper: descendants orphaned by a dead launcher or JVM become its children and it reaps them,
so a dead group is seen gone at once even where init reaps slowly or never (a container).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

GRACE_S = 5.0
PR_SET_CHILD_SUBREAPER = 36


def reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def group_gone(group: int, timeout: float, reap: bool = False) -> bool:
    """Wait until no process of ``group`` is left (up to ``timeout`` s), reaping our own children
    meanwhile when ``reap`` (the guard's main thread only: elsewhere a reap would steal statuses)."""
    deadline = time.monotonic() + timeout
    while True:
        if reap:
            reap_children()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def stop_group(group: int, reap: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
        if not group_gone(group, GRACE_S, reap):
            os.killpg(group, signal.SIGKILL)
            group_gone(group, GRACE_S, reap)


def wait_reaping(pid: int) -> int:
    """Reap children as they exit (orphaned descendants included) until ``pid`` has; its status."""
    while True:
        reaped, status = os.waitpid(-1, 0)
        if reaped == pid:
            return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: process_guard.py PID_FILE -- COMMAND...", file=sys.stderr)
        return 2
    pid_file, command = Path(argv[1]), argv[3:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        pid_file.write_text(json.dumps({"guard": os.getpid(), "pgid": child.pid}))
    except OSError:
        stop_group(child.pid)
        raise

    def stop_in_background(*_: object) -> None:  # the main thread keeps reaping the launcher meanwhile
        threading.Thread(target=stop_group, args=(child.pid,), daemon=True).start()

    def watch_service() -> None:
        sys.stdin.buffer.read()  # returns at end of file: the service has gone or let go
        stop_group(child.pid)

    signal.signal(signal.SIGTERM, stop_in_background)
    threading.Thread(target=watch_service, daemon=True).start()
    status = child.returncode = wait_reaping(child.pid)
    stop_group(child.pid, reap=True)  # workers left behind by a launcher that exited
    pid_file.unlink(missing_ok=True)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: the watching thread is still blocked reading stdin
