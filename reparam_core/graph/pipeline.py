"""``reparam fuse-graph``: a user's model factory + checkpoint -> graph-fused, verified artifacts.

Same safety and gate as ``reparam convert``: the checkpoint is read safely and loaded strictly,
fusion happens in float64, equivalence is proven in float64 (TF32 off) at the given input shape
and a smaller non-square one, and nothing is written when it fails. The factory is user code and
runs here: this is a command-line feature, never exposed by the HTTP service.
"""

from __future__ import annotations

import copy
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoints import check_values, load_strictly, read_checkpoint
from ..deploy.artifacts import PROGRAM, WEIGHTS, export_program, finish_with_report, staged_folder
from ..equivalence import EquivalenceReport, check_equivalence, gate_shapes, resolve_device
from ..errors import EquivalenceError, SpecError
from .fuse import GraphFusionReport, fuse_graph

GRAPH_CODE = "graph_module.py"


@dataclass
class GraphConversion:
    module: nn.Module  # float32, on the CPU
    fusion: GraphFusionReport
    equivalence: list[EquivalenceReport]
    input_shape: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)


def load_factory(reference: str) -> nn.Module:
    """``package.module:function`` -> the model it returns (the current folder is importable)."""
    module_name, _, function = reference.partition(":")
    if not module_name or not function:
        raise SpecError(f"--factory {reference!r}: expected 'package.module:function'")
    sys.path.insert(0, str(Path.cwd()))
    try:
        model = getattr(importlib.import_module(module_name), function)()
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"--factory {reference!r}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"--factory {reference!r} returned {type(model).__name__}, not an nn.Module")
    return model


def fuse_checkpoint(
    model: nn.Module,
    checkpoint: str | Path,
    input_shape: tuple[int, ...],
    *,
    device: str = "auto",
    tolerance: float = 1e-9,
) -> GraphConversion:
    if len(input_shape) != 4:
        raise SpecError(f"--input-shape {input_shape}: expected N,C,H,W")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    state = read_checkpoint(checkpoint).state
    check_values(state)
    load_strictly(model, state)
    model = model.eval().double().to(resolve_device(device))
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    example = torch.randn(input_shape, dtype=torch.float64, device=next(model.parameters()).device)
    fusion = fuse_graph(model, example)
    timings["fuse"] = time.perf_counter() - start
    start = time.perf_counter()
    reports = [
        check_equivalence(model, fusion.module, shape, device=device, tolerance=tolerance, seed=i)
        for i, shape in enumerate(gate_shapes(input_shape))
    ]
    timings["validate"] = time.perf_counter() - start
    if not all(r.passed for r in reports):
        worst = max(r.max_rel_error for r in reports)
        raise EquivalenceError(
            f"graph fusion failed the gate: max relative error {worst:.3e} > {tolerance:g}", reports
        )
    stored = copy.deepcopy(fusion.module).float().cpu().eval()
    return GraphConversion(stored, fusion.report, reports, tuple(input_shape), timings)


def write_graph_artifacts(
    result: GraphConversion, out_dir: str | Path, *, export: bool = True
) -> dict[str, str]:
    with staged_folder(out_dir) as staging:
        weights = {k: v.detach().contiguous() for k, v in result.module.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS), metadata={"format": "pt"})
        (staging / GRAPH_CODE).write_text(getattr(result.module, "code", ""))
        if export:
            export_program(result.module, result.input_shape, staging / PROGRAM)
        report: dict[str, Any] = {
            "fusion": result.fusion.model_dump(mode="json"),
            "equivalence": [r.model_dump(mode="json") for r in result.equivalence],
            "timings": result.timings,
        }
        return finish_with_report(staging, report)
