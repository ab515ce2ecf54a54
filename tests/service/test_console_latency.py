"""The console's latency figures: quantiles from Prometheus buckets (as ``histogram_quantile``
computes them), per sampling interval, in a bounded ring buffer; the request counts by status."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.metrics import LATENCY_BUCKETS
from service.ui.latency import Buckets, LatencySampler, quantile, read_histogram, requests_by_status


def _histogram() -> Histogram:
    return Histogram(
        "t_seconds", "test", ["model", "version"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry()
    )


def test_quantile_interpolates_within_the_bucket() -> None:
    buckets = Buckets((0.1, 0.2, 0.5, float("inf")), (10, 30, 40, 40))
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.1 * 10 / 20)  # rank 20: halfway into (0.1, 0.2]
    assert quantile(0.99, buckets) == pytest.approx(0.2 + 0.3 * 9.6 / 10)
    assert quantile(0.05, buckets) == pytest.approx(0.1 * 2 / 10)  # the first bucket starts at 0
    in_inf = Buckets((0.1, 0.2, 0.5, float("inf")), (1, 1, 1, 5))
    assert quantile(0.99, in_inf) == 0.5  # in the +Inf bucket: the highest finite bound
    assert quantile(0.5, Buckets((0.1, float("inf")), (0, 0))) is None


def test_quantiles_of_observations_land_in_their_bucket() -> None:
    histogram = _histogram()
    rng = np.random.default_rng(0)
    observed = rng.lognormal(mean=np.log(0.008), sigma=0.6, size=2000)
    for value in observed:
        histogram.labels("m", "1").observe(float(value))
    (buckets,) = read_histogram(histogram).values()
    assert buckets.total == 2000
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(observed, q))
        upper = next(b for b in LATENCY_BUCKETS if b >= exact)
        lower = max((b for b in LATENCY_BUCKETS if b < exact), default=0.0)
        estimate = quantile(q, buckets)
        assert estimate is not None and lower <= estimate <= upper, (q, exact, estimate)


def test_each_interval_has_its_own_quantiles_and_the_buffer_is_bounded() -> None:
    histogram = _histogram()
    sampler = LatencySampler(histogram, interval_s=1.0, capacity=3)
    sampler.sample(at=100.0)
    for _ in range(4):
        histogram.labels("m", "1").observe(0.004)
    sampler.sample(at=101.0)
    histogram.labels("m", "1").observe(0.25)
    histogram.labels("m", "2").observe(0.25)
    histogram.labels("m", "1").observe(0.25)
    sampler.sample(at=102.0)

    series = sampler.series()
    assert list(series) == [("m", "1"), ("m", "2")]
    first, second = series[("m", "1")]
    assert (first.at, first.count, second.at, second.count) == (101.0, 4, 102.0, 2)
    assert all(0.003 < v <= 0.005 for v in first.quantiles.values())  # only the first interval's requests
    assert all(0.2 < v <= 0.3 for v in second.quantiles.values())
    assert [p.count for p in series[("m", "2")]] == [1]
    assert sampler.overall()[("m", "1")].count == 6

    for second_ in range(10):
        sampler.sample(at=103.0 + second_)
    assert len(sampler.samples) == 3  # a ring buffer: the oldest samples are dropped
    with pytest.raises(ValueError):
        LatencySampler(histogram, interval_s=0)


def test_the_sampler_runs_in_the_background() -> None:
    async def run() -> int:
        sampler = LatencySampler(_histogram(), interval_s=0.01, capacity=100)
        sampler.start()
        await asyncio.sleep(0.2)
        await sampler.stop()
        taken = len(sampler.samples)
        await asyncio.sleep(0.05)
        assert len(sampler.samples) == taken  # stopped
        return taken

    assert asyncio.run(run()) >= 3


def test_requests_by_status() -> None:
    counter = Counter("r", "test", ["route", "method", "status"], registry=CollectorRegistry())
    counter.labels("/predict/{name}", "POST", "200").inc(3)
    counter.labels("/predict/{name}", "POST", "415").inc()
    counter.labels("/models", "GET", "200").inc()
    assert requests_by_status(counter) == {
        "GET /models": {"200": 1.0},
        "POST /predict/{name}": {"200": 3.0, "415": 1.0},
    }
