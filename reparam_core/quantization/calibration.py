"""Calibration inputs: the user's own preprocessed inputs ``[N, C, H, W]``, checked and bounded.

They come as a tensor, a safetensors file holding ``inputs`` (a reference file's ``inputs`` serve
too; its ``outputs`` are ignored here), or, through the service, as images decoded with the spec's
preprocessing. At most ``MAX_CALIBRATION_SAMPLES`` inputs of at most ``MAX_SCALE`` times the spec's input size
per axis: the quantization report runs the net once per layer on all of them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import SpecError
from ..reference import read_tensors

MAX_CALIBRATION_SAMPLES = 64
MAX_SCALE = 2
HELD_OUT_EVERY = 4  # every 4th input is held out from INT8 calibration to measure its agreement
MIN_INT8_SAMPLES = 8  # 6 to calibrate on, 2 held out at the least


def read_calibration(
    source: str | Path | bytes | Tensor, in_channels: int, input_size: tuple[int, int]
) -> Tensor:
    """Calibration inputs from a tensor or a safetensors file (``inputs``), as float32, checked."""
    if isinstance(source, Tensor):
        inputs = source
    else:
        tensors = read_tensors(source, "calibration")
        if "inputs" not in tensors:
            raise SpecError(f"calibration: needs a tensor 'inputs' [N, C, H, W], has {sorted(tensors)}")
        inputs = tensors["inputs"]
    return check_calibration(inputs, in_channels, input_size)


def check_calibration(inputs: Tensor, in_channels: int, input_size: tuple[int, int]) -> Tensor:
    """``inputs`` as float32 on the CPU, or ``SpecError`` naming every problem."""
    problems = []
    if inputs.ndim != 4 or inputs.shape[1] != in_channels or inputs.shape[0] < 1:
        problems.append(f"inputs {list(inputs.shape)} should be [N, {in_channels}, H, W] with N >= 1")
    if not inputs.is_floating_point():
        problems.append(f"inputs must be floating point (preprocessed), not {inputs.dtype}")
    elif not bool(torch.isfinite(inputs).all()):
        problems.append("inputs must be finite")
    limit = (MAX_SCALE * input_size[0], MAX_SCALE * input_size[1])
    too_large = inputs.ndim == 4 and (inputs.shape[2] > limit[0] or inputs.shape[3] > limit[1])
    if too_large or (inputs.ndim >= 1 and inputs.shape[0] > MAX_CALIBRATION_SAMPLES):
        problems.append(f"at most {MAX_CALIBRATION_SAMPLES} inputs of at most {limit[0]}x{limit[1]} pixels")
    if inputs.ndim == 4 and min(inputs.shape[2:]) < 8:
        problems.append("inputs of at least 8x8 pixels")
    if problems:
        raise SpecError("calibration: " + "; ".join(problems))
    return inputs.detach().float().cpu().contiguous()


def split_calibration(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """``(calibrate_on, held_out)``: every ``HELD_OUT_EVERY``-th input held out (inputs sorted by
    class still land in both parts)."""
    if inputs.shape[0] < MIN_INT8_SAMPLES:
        raise SpecError(
            f"calibration: INT8 needs at least {MIN_INT8_SAMPLES} inputs (every {HELD_OUT_EVERY}th is held "
            f"out to measure the agreement), got {inputs.shape[0]}"
        )
    held = torch.zeros(inputs.shape[0], dtype=torch.bool)
    held[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY] = True
    return inputs[~held], inputs[held]
