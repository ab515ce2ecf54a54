"""Shared helpers for the benchmark scripts: timing, environment description, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# benchmark key -> (timm model name, our architecture spec): the same nets on both sides
MODELS: dict[str, tuple[str, dict[str, str]]] = {
    "A0": ("repvgg_a0", {"family": "repvgg", "variant": "A0"}),
    "B1": ("repvgg_b1", {"family": "repvgg", "variant": "B1"}),
    "B3": ("repvgg_b3", {"family": "repvgg", "variant": "B3"}),
    "S0": ("mobileone_s0", {"family": "mobileone", "variant": "S0"}),
}


def every_preset() -> dict[str, tuple[str | None, dict[str, str]]]:
    """Every published preset we ship -> (timm's name for it, when timm has it; our spec)."""
    import timm

    from reparam_core.arch.mobileone import MOBILEONE
    from reparam_core.arch.vgg import REPOPT_VGG, REPVGG

    in_timm = set(timm.list_models("repvgg*") + timm.list_models("mobileone*"))
    table: dict[str, tuple[str | None, dict[str, str]]] = {}
    for family, label, variants in (
        ("repvgg", "RepVGG", REPVGG),
        ("mobileone", "MobileOne", MOBILEONE),
        ("repopt_vgg", "RepOpt-VGG", REPOPT_VGG),
    ):
        for variant in variants:
            name = f"{family}_{variant.lower()}"
            table[f"{label}-{variant}"] = (
                name if name in in_timm else None,
                {"family": family, "variant": variant},
            )
    return table


def timed(fn: Callable[[], Any], repeats: int, sync: bool = False) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls (CUDA synchronised around each when ``sync``)."""
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def environment() -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        env["timm"] = None
    return env


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2))
    return path


def calibrate_statistics(
    model: torch.nn.Module, batch: torch.Tensor, classifier: torch.nn.Linear
) -> torch.nn.Module:
    """``model`` with BatchNorm statistics of ``batch`` (a plain average over it) and its logits
    scaled to a spread of about 2: a random-weight net whose arg-max depends on its input."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.train()(batch)
        logits = model.eval()(batch)
        classifier.weight.mul_(2.0 / logits.std())
    return model.eval()
