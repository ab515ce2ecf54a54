"""What the console's pages show, computed from the API's own answers (``routes.models``) and the
latency sampler: table rows and chart geometry, so the templates only lay them out."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from .latency import QUANTILES, Point

CHECK_KEYS = ("max_rel_error", "passed")


@dataclass(frozen=True)
class Check:
    name: str
    where: str | None
    dtype: str | None
    input_shape: list[int] | None
    max_rel_error: float | None
    rel_l2_error: float | None
    tolerance: float | None
    top1_agreement: float | None
    passed: bool
    error: str | None


def _check(name: str, entry: dict[str, Any]) -> Check:
    return Check(
        name=name,
        where=entry.get("where"),
        dtype=entry.get("dtype"),
        input_shape=entry.get("input_shape"),
        max_rel_error=entry.get("max_rel_error"),
        rel_l2_error=entry.get("rel_l2_error"),
        tolerance=entry.get("tolerance"),
        top1_agreement=entry.get("top1_agreement"),
        passed=bool(entry.get("passed")),
        error=entry.get("error"),
    )


def _is_check(value: object) -> bool:
    return isinstance(value, dict) and all(key in value for key in CHECK_KEYS)


def checks(report: dict[str, Any]) -> list[Check]:
    """Every check of an equivalence report, in the gate's order (float64 blocks first)."""
    rows = [_check("float64 block", entry) for entry in report.get("fp64") or []]
    named = (
        ("stored net, float32", report.get("fp32")),
        ("training net, float32 (baseline)", report.get("fp32_train")),
        ("stored weights", report.get("stored_weights")),
        ("served configuration", (report.get("serving") or {}).get("equivalence")),
        (
            "training net, served precision (baseline)",
            (report.get("serving") or {}).get("train_same_precision"),
        ),
        ("your reference outputs", report.get("reference")),
        ("model.onnx in ONNX Runtime", report.get("onnx")),
    )
    rows += [_check(name, entry) for name, entry in named if isinstance(entry, dict) and _is_check(entry)]
    return rows + quantization_checks(report.get("quantization"))


def quantization_checks(quantization: object) -> list[Check]:
    """The check-shaped entries of a quantization report (absent: none), one level deep."""
    if not isinstance(quantization, dict):
        return []
    rows = [_check(f"quantization: {key}", value) for key, value in quantization.items() if _is_check(value)]
    for key, value in quantization.items():
        if isinstance(value, list):
            rows += [_check(f"quantization: {key}", entry) for entry in value if _is_check(entry)]
    return rows


def quantization_facts(quantization: object) -> list[tuple[str, str]]:
    """The quantization report's plain fields (numbers, strings, flags), for a key/value table."""
    if not isinstance(quantization, dict):
        return []
    return [
        (key, str(value))
        for key, value in quantization.items()
        if isinstance(value, str | int | float | bool) or value is None
    ]


def sci(value: float | None) -> str:
    """A number as the console shows it: 3 significant digits, exponent form below 0.01."""
    if value is None:
        return "—"
    if value == 0 or 0.01 <= abs(value) < 1e4:
        return f"{value:.3g}"
    return f"{value:.2e}"


def size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "—"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def when(iso: str) -> str:
    """An ISO time as ``2026-12-03 02:19 UTC``."""
    moment = dt.datetime.fromisoformat(iso).astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Bar:
    label: str
    seconds: float
    share: float  # of the longest stage's time: the bar's length


def timing_bars(timings: dict[str, Any]) -> list[Bar]:
    """Stage timings as bars (the longest is full length), in the conversion's order."""
    stages = [(k, float(v)) for k, v in timings.items() if isinstance(v, int | float)]
    longest = max((v for _, v in stages), default=0.0) or 1.0
    return [Bar(k, v, max(0.005, v / longest)) for k, v in stages]


@dataclass(frozen=True)
class Line:
    quantile: float
    points: str  # SVG polyline points, "x,y x,y ..."


@dataclass(frozen=True)
class Chart:
    lines: list[Line]
    y_ticks: list[tuple[float, str]]  # (y, label in ms)
    x_ticks: list[tuple[float, str]]  # (x, label HH:MM:SS)
    markers: list[tuple[float, float, float, str]]  # (x, y, quantile, title) for single points


def latency_chart(
    points: list[Point], start: float, end: float, width: float = 600.0, height: float = 200.0
) -> Chart:
    """p50/p95/p99 (ms) against time from ``start`` to ``end``, scaled to a ``width`` x ``height`` plot."""
    top_ms = max((v * 1e3 for p in points for v in p.quantiles.values()), default=1.0)
    top_ms = _nice(top_ms)
    span = max(end - start, 1e-9)

    def x(at: float) -> float:
        return round(width * (at - start) / span, 1)

    def y(ms: float) -> float:
        return round(height - height * ms / top_ms, 1)

    lines, markers = [], []
    for q in QUANTILES:
        coords = [(x(p.at), y(p.quantiles[q] * 1e3)) for p in points if q in p.quantiles]
        lines.append(Line(q, " ".join(f"{a},{b}" for a, b in coords)))
        for p in points:
            if q in p.quantiles:
                ms = p.quantiles[q] * 1e3
                title = f"p{round(q * 100)} {ms:.2f} ms at {clock(p.at)}, {p.count:.0f} requests"
                markers.append((x(p.at), y(ms), q, title))
    y_ticks = [(y(top_ms * f), f"{top_ms * f:.3g}") for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    x_ticks = [(x(start + span * f), clock(start + span * f)) for f in (0.0, 0.5, 1.0)]
    return Chart(lines, y_ticks, x_ticks, markers)


def _nice(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (an axis' top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S")
