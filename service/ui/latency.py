"""/predict latency over time, from the service's own Prometheus histograms (``metrics.py``).

A :class:`LatencySampler` reads the cumulative bucket counts of ``reparam_predict_latency_seconds``
every ``interval_s`` seconds into a bounded ring buffer (``capacity`` samples: an hour at the
defaults); p50/p95/p99 of each interval come from the bucket counts added between two samples,
interpolated within a bucket as Prometheus' ``histogram_quantile`` does. Nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

QUANTILES = (0.5, 0.95, 0.99)
INTERVAL_S = 10.0
CAPACITY = 360  # samples kept: an hour at the default interval


@dataclass(frozen=True)
class Buckets:
    """One series' cumulative counts per upper bound (the last bound is +Inf)."""

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    @property
    def total(self) -> float:
        return self.counts[-1] if self.counts else 0.0

    def minus(self, earlier: Buckets | None) -> Buckets:
        if earlier is None or earlier.bounds != self.bounds:
            return self
        return Buckets(self.bounds, tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True)))


@dataclass(frozen=True)
class Sample:
    at: float  # time.time() of the sample
    series: dict[tuple[str, str], Buckets]  # (model, version) -> cumulative buckets


@dataclass(frozen=True)
class Point:
    at: float
    count: float  # requests in the interval that ends at ``at``
    quantiles: dict[float, float]  # seconds


def quantile(q: float, buckets: Buckets) -> float | None:
    """``histogram_quantile(q, ...)``: None without observations; the highest finite bound when
    the rank falls in the +Inf bucket."""
    total = buckets.total
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(buckets.bounds, buckets.counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def read_histogram(histogram: Histogram) -> dict[tuple[str, str], Buckets]:
    """The cumulative buckets of each (model, version) series of ``histogram``, now."""
    found: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                key = (sample.labels["model"], sample.labels["version"])
                found.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    result = {}
    for key, pairs in found.items():
        pairs.sort()
        result[key] = Buckets(tuple(b for b, _ in pairs), tuple(c for _, c in pairs))
    return result


def requests_by_status(counter: Counter) -> dict[str, dict[str, float]]:
    """Requests counted so far: route -> status -> count (routes sorted, statuses sorted)."""
    table: dict[str, dict[str, float]] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                route = f"{sample.labels['method']} {sample.labels['route']}"
                by_status = table.setdefault(route, {})
                status = sample.labels["status"]
                by_status[status] = by_status.get(status, 0.0) + sample.value
    return {route: dict(sorted(table[route].items())) for route in sorted(table)}


class LatencySampler:
    """Samples ``histogram`` every ``interval_s`` seconds into a ring buffer of ``capacity``."""

    def __init__(
        self, histogram: Histogram, interval_s: float = INTERVAL_S, capacity: int = CAPACITY
    ) -> None:
        if interval_s <= 0 or capacity < 2:
            raise ValueError("interval_s must be positive and capacity at least 2")
        self.histogram, self.interval_s = histogram, interval_s
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self._task: asyncio.Task[None] | None = None

    def sample(self, at: float | None = None) -> Sample:
        taken = Sample(time.time() if at is None else at, read_histogram(self.histogram))
        self.samples.append(taken)
        return taken

    def series(self) -> dict[tuple[str, str], list[Point]]:
        """Per (model, version), one point per interval between consecutive samples that saw
        requests (the last interval ends now); the quantiles are those of that interval's requests."""
        out: dict[tuple[str, str], list[Point]] = {}
        samples = [*self.samples, Sample(time.time(), read_histogram(self.histogram))]
        for earlier, later in itertools.pairwise(samples):
            for key, buckets in later.series.items():
                delta = buckets.minus(earlier.series.get(key))
                if delta.total > 0:
                    values = {q: quantile(q, delta) for q in QUANTILES}
                    point = Point(later.at, delta.total, {q: v for q, v in values.items() if v is not None})
                    out.setdefault(key, []).append(point)
        return dict(sorted(out.items()))

    def overall(self) -> dict[tuple[str, str], Point]:
        """Per (model, version), the quantiles of every request since the service started."""
        now = read_histogram(self.histogram)
        out = {}
        for key, buckets in sorted(now.items()):
            values = {q: quantile(q, buckets) for q in QUANTILES}
            out[key] = Point(time.time(), buckets.total, {q: v for q, v in values.items() if v is not None})
        return out

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
