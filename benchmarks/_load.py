"""A second process that keeps one core busy on demand (the "busy" condition of the benchmarks)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.synchronize import Event
from types import TracebackType

SETTLE_S = 0.3  # after switching the load on or off, before timing


def _spin(core: int, busy: Event, stop: Event, ready: Event) -> None:
    import torch

    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    ready.set()
    while not stop.is_set():
        if busy.wait(0.05):
            for _ in range(20):  # ~10 ms of single-threaded fp32 matmuls between checks
                a = torch.tanh(a @ a)


class BusyCore:
    """``with BusyCore() as load: load.switch(True)`` - single-threaded fp32 matmuls pinned to one
    core (the last this process may use) while switched on; idle (blocked on an event) otherwise."""

    def __init__(self, core: int | None = None) -> None:
        self.core = max(os.sched_getaffinity(0)) if core is None else core
        ctx = mp.get_context("spawn")
        self.busy, self.stop, self.ready = ctx.Event(), ctx.Event(), ctx.Event()
        self.process = ctx.Process(
            target=_spin, args=(self.core, self.busy, self.stop, self.ready), daemon=True
        )

    def __enter__(self) -> BusyCore:
        self.process.start()
        if not self.ready.wait(120):
            self.process.kill()
            raise RuntimeError("the load process did not start")
        return self

    def switch(self, on: bool) -> None:
        (self.busy.set if on else self.busy.clear)()
        time.sleep(SETTLE_S)
        if not self.process.is_alive():
            raise RuntimeError(f"the load process died (exit code {self.process.exitcode})")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop.set()
        self.busy.set()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
