"""How many torch intra-op threads the memory-bound stages of a conversion run on.

Reading, checking, loading and fusing a checkpoint are streams of memory-bound ops (casts, scales,
sums) over hundreds of tensors. More threads barely help them on an idle machine, and when another
process holds one of the cores every multi-threaded op waits for its preempted thread: on a shared
2-core machine, two threads made the conversion 3-15x slower than one (RepVGG-A0 to B3, with and
without a second process busy on a core: ``benchmarks/convert_bench.py --load both``). The
compute-bound gate keeps every thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

MEMORY_BOUND_THREADS = 1


@contextmanager
def intra_op_threads(threads: int | None = None) -> Iterator[None]:
    """Run the body with at most ``threads`` (default :data:`MEMORY_BOUND_THREADS`) torch intra-op
    threads, then restore the count.

    torch keeps the count per thread once a thread has run a parallel op, so setting and restoring
    it here leaves the ops of other running threads alone (a thread that starts its first parallel
    op inside the window takes the lower count).
    """
    before = torch.get_num_threads()
    if threads is None:
        threads = MEMORY_BOUND_THREADS
    if threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
