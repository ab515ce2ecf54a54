"""Reference outputs: proof against the user's own model, not only against our rebuilt training net.

A reference file is a safetensors file with ``inputs`` ``[N, C, H, W]`` and ``outputs``
``[N, classes]``, written by the user's training code from the model in eval mode::

    model.eval()
    inputs = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        safetensors.torch.save_file({"inputs": inputs, "outputs": model(inputs)}, "reference.safetensors")

The gate then also runs the fused net on ``inputs`` and holds it to ``outputs``, with a bound
derived from the dtype the outputs were computed in (see :mod:`reparam_core.gate`).
:func:`make_reference` writes such a file from any model (``reparam reference``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .deploy.artifacts import write_file_atomically
from .errors import SpecError

MAX_SAMPLES = 64
MAX_SCALE = 2  # reference images at most twice the spec's input size per axis


@dataclass(frozen=True)
class Reference:
    inputs: Tensor  # [N, C, H, W]
    outputs: Tensor  # [N, classes]

    @property
    def dtype(self) -> torch.dtype:
        """The precision the user's model computed ``outputs`` in."""
        return self.outputs.dtype


def read_tensors(source: str | Path | bytes, what: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file (path or bytes); ``SpecError`` naming ``what`` otherwise."""
    try:
        return load_safetensors_bytes(source) if isinstance(source, bytes) else load_file(str(source))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpecError(f"{what}: not a readable safetensors file ({exc})") from None


def read_reference(
    source: str | Path | bytes | dict[str, Tensor],
    in_channels: int,
    classes: int,
    input_size: tuple[int, int],
) -> Reference:
    """A reference file (path, bytes or tensors), checked against the spec; ``SpecError`` otherwise.
    At most ``MAX_SAMPLES`` inputs of at most ``MAX_SCALE`` times the spec's ``input_size`` per
    axis: the gate runs the float64 nets on all of them."""
    tensors = source if isinstance(source, dict) else read_tensors(source, "reference")
    if set(tensors) != {"inputs", "outputs"}:
        raise SpecError(f"reference: needs exactly the tensors 'inputs' and 'outputs', has {sorted(tensors)}")
    inputs, outputs = tensors["inputs"], tensors["outputs"]
    problems = []
    if inputs.ndim != 4 or inputs.shape[1] != in_channels:
        problems.append(f"inputs {list(inputs.shape)} should be [N, {in_channels}, H, W]")
    if outputs.ndim != 2 or outputs.shape[1] != classes:
        problems.append(f"outputs {list(outputs.shape)} should be [N, {classes}]")
    elif inputs.ndim >= 1 and outputs.shape[0] != inputs.shape[0]:
        problems.append(f"{inputs.shape[0]} inputs but {outputs.shape[0]} outputs")
    if not (inputs.is_floating_point() and outputs.is_floating_point()):
        problems.append("inputs and outputs must be floating point")
    elif not (bool(torch.isfinite(inputs).all()) and bool(torch.isfinite(outputs).all())):
        problems.append("inputs and outputs must be finite")
    limit = (MAX_SCALE * input_size[0], MAX_SCALE * input_size[1])
    too_large = inputs.ndim == 4 and (inputs.shape[2] > limit[0] or inputs.shape[3] > limit[1])
    if too_large or (inputs.ndim >= 1 and inputs.shape[0] > MAX_SAMPLES):
        problems.append(f"at most {MAX_SAMPLES} inputs of at most {limit[0]}x{limit[1]} pixels")
    if problems:
        raise SpecError("reference: " + "; ".join(problems))
    return Reference(inputs, outputs)


def make_reference(model: nn.Module, inputs: Tensor, out: str | Path) -> Reference:
    """Run ``model`` in eval mode on ``inputs`` and write them and its outputs to ``out`` (atomically)."""
    model.eval()
    with torch.no_grad():
        outputs = model(inputs.to(next(model.parameters()).dtype))
    reference = Reference(inputs.contiguous(), outputs.detach().contiguous())
    tensors = {"inputs": reference.inputs, "outputs": reference.outputs}
    write_file_atomically(out, lambda tmp: save_file(tensors, str(tmp)))
    return reference
