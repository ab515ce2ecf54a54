"""Numerical proof that a fused model computes what the training model computes.

:func:`check_equivalence` runs two models on the same seeded inputs and reports relative errors
(:class:`EquivalenceReport`); :func:`gate_shapes` is where the graph-fusion gate runs them (the conversion
gate probes a block at a time, see :mod:`reparam_core.gate`); TF32 is switched off while measuring
(:func:`tf32_disabled`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from math import inf
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn


class EquivalenceReport(BaseModel):
    """Errors of ``candidate`` against ``reference`` on the same random inputs.

    ``max_rel_error`` is ``max|a-b| / max|ref|``; ``rel_l2_error`` is ``||a-b|| / ||ref||``;
    ``top1_agreement`` is the share of rows whose arg-max agrees (2-D outputs only). Without a
    ``tolerance`` (a measurement for information), ``passed`` only says the outputs are finite.
    Outputs of different shapes count as infinitely far apart. ``where`` names the part compared
    (a block of the net) when it is not the whole net; ``error`` says why the candidate gave no
    output to compare (it failed to run on the input).
    """

    where: str | None = None
    input_shape: list[int]
    dtype: str
    device: str
    max_abs_error: float
    max_rel_error: float
    rel_l2_error: float
    top1_agreement: float | None
    tolerance: float | None
    passed: bool
    error: str | None = None


def set_tf32(enabled: bool) -> None:
    """Allow or forbid TF32 in cuDNN convs and CUDA matmuls (on by default for convs on Ampere+)."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """TF32 off for the duration (true float32 arithmetic), restored afterwards."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def gate_shapes(input_shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Where the graph-fusion gate compares two nets: ``input_shape`` ``(N, C, H, W)`` itself, plus a smaller
    non-square input of batch 1 (borders and SE pooling behave differently there)."""
    n, c, h, w = input_shape
    small_h, small_w = max(8, h // 2 + 1), max(8, w // 2 + 9)
    if small_h == small_w:
        small_w += 2
    return [(n, c, h, w), (1, c, small_h, small_w)]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/``None`` -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compare_outputs(reference: Tensor, candidate: Tensor) -> dict[str, Any]:
    """The error measures of :class:`EquivalenceReport`, computed in float64."""
    if reference.shape != candidate.shape:
        return {"max_abs_error": inf, "max_rel_error": inf, "rel_l2_error": inf, "top1_agreement": None}
    ref, cand = reference.detach().double(), candidate.detach().double()
    diff = (ref - cand).abs()
    scale = ref.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    top1 = None
    if ref.ndim == 2:
        top1 = (ref.argmax(dim=1) == cand.argmax(dim=1)).double().mean().item()
    finite = bool(torch.isfinite(cand).all())
    return {
        "max_abs_error": diff.max().item() if finite else float("inf"),
        "max_rel_error": (diff.max() / scale).item() if finite else float("inf"),
        "rel_l2_error": (diff.norm() / ref.norm().clamp_min(torch.finfo(torch.float64).tiny)).item()
        if finite
        else float("inf"),
        "top1_agreement": top1,
    }


def measure(
    reference_output: Tensor,
    candidate_output: Tensor,
    input_shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device | str,
    tolerance: float | None,
    where: str | None = None,
) -> EquivalenceReport:
    """Build an :class:`EquivalenceReport` from two outputs for the same input."""
    errors = compare_outputs(reference_output, candidate_output)
    return EquivalenceReport(
        where=where,
        input_shape=list(input_shape),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        tolerance=tolerance,
        passed=errors["max_rel_error"] <= (tolerance if tolerance is not None else float("inf")),
        **errors,
    )


def random_input(shape: Sequence[int], seed: int = 0) -> Tensor:
    """Seeded standard-normal float64 input (CPU generator: identical on every device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64)


def check_equivalence(
    reference: nn.Module,
    candidate: nn.Module,
    input_shape: Sequence[int],
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = "auto",
    *,
    tolerance: float = 1e-9,
    seed: int = 0,
    inputs: Tensor | None = None,
) -> EquivalenceReport:
    """Run both models in eval mode on the same seeded inputs and report how far apart they are.

    The models are copied (never modified) into ``dtype`` on ``device``; TF32 is off for the run.
    ``passed`` means ``max_rel_error <= tolerance`` and every output is finite.
    """
    target = resolve_device(device)
    x = (inputs if inputs is not None else random_input(input_shape, seed)).to(device=target, dtype=dtype)
    ref_model = copy.deepcopy(reference).to(device=target, dtype=dtype).eval()
    cand_model = copy.deepcopy(candidate).to(device=target, dtype=dtype).eval()
    with tf32_disabled(), torch.inference_mode():
        return measure(ref_model(x), cand_model(x), x.shape, dtype, target, tolerance)
