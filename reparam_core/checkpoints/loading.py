"""Loading a checkpoint's tensors into a training net, strictly, whatever layout they come in.

The layout is matched against the net's own keys (:func:`~.key_formats.detect_format`); a
deploy-form checkpoint, a checkpoint of another architecture, missing or unexpected keys and
shape mismatches are all refused, each offender named.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..blocks import ReparamBlock
from ..errors import CheckpointError
from .key_formats import FORMATS, detect_format, guess_family, identify_format, is_deploy_form
from .reading import WEIGHT_DTYPES, listing

MIN_COVERAGE = 0.5  # below this share of expected keys, the checkpoint is of another architecture


def load_into(model: nn.Module, state: dict[str, Tensor], device: torch.device) -> str:
    """Map ``state`` onto ``model`` (built on the meta device) and load it; returns the format name.

    Floats are loaded as float64 (conv kernels of row-separable nets keep their dtype: fusion
    computes in float64 by type promotion). Every missing key, unexpected key and shape mismatch
    is reported at once.
    """
    expected = model.state_dict()
    blocks = [name for name, m in model.named_modules() if isinstance(m, ReparamBlock)]
    fused_keys = [f"{name}.conv.{leaf}" for name in blocks for leaf in ("weight", "bias")]
    if is_deploy_form(state, fused_keys):
        raise CheckpointError(
            "checkpoint is in deploy form (its blocks are already fused into single convs); "
            "conversion needs the training-form checkpoint with every branch"
        )
    match = detect_format(state, expected)
    if match.coverage < MIN_COVERAGE:
        family = guess_family(state)
        looks = f"; its keys look like a {family!r} checkpoint" if family else ""
        raise CheckpointError(
            f"checkpoint does not fit the spec: only {match.matched} of {match.expected} expected keys "
            f"found in any known layout ({', '.join(f.name for f in FORMATS)}){looks}; "
            f"e.g. it has {', '.join(list(state)[:3])}"
        )
    mapped = match.state
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    _check_keys(expected, mapped, optional, match.format)
    _check_dtypes(expected, mapped)
    separable = all(m.row_separable for m in model.modules() if isinstance(m, ReparamBlock))
    tensors = {k: _to(v, device, keep_kernels=separable) for k, v in mapped.items()}
    for key in optional - tensors.keys():
        tensors[key] = torch.zeros((), dtype=torch.long, device=device)
    model.load_state_dict(tensors, strict=True, assign=True)
    if match.format == "native" and identify_format(state).name == "timm":
        return "timm"  # our layout of RepVGG / MobileOne branches is timm's
    return match.format


def load_strictly(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)`` for a model of the user's own, with what does
    not fit said on one line (torch lists every key on a line of its own)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [
        f"{what} {listing(keys, 5)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch in", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"checkpoint does not fit the model: {'; '.join(problems)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # what is left: a dtype torch cannot copy
        raise CheckpointError(
            f"checkpoint does not fit the model: {str(exc).splitlines()[-1].strip()}"
        ) from None


def fits(model: nn.Module, state: dict[str, Tensor]) -> bool:
    """Whether ``state`` (in any known layout) has exactly ``model``'s tensors, shapes included."""
    expected = model.state_dict()
    match = detect_format(state, expected)
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    return set(match.state) - optional == set(expected) - optional and all(
        match.state[k].shape == expected[k].shape for k in match.state if k in expected
    )


def _check_dtypes(expected: dict[str, Tensor], mapped: dict[str, Tensor]) -> None:
    """Weights and statistics are real floats (integers, booleans, complex and float8 are not)."""
    wrong = [
        f"{key} ({mapped[key].dtype})"
        for key, target in expected.items()
        if key in mapped and target.is_floating_point() and mapped[key].dtype not in WEIGHT_DTYPES
    ]
    if wrong:
        raise CheckpointError(f"weights must be float16/bfloat16/float32/float64, not {listing(wrong)}")


def _check_keys(
    expected: dict[str, Tensor], mapped: dict[str, Tensor], optional: set[str], layout: str
) -> None:
    missing = [k for k in expected if k not in mapped and k not in optional]
    unexpected = [k for k in mapped if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch in {listing(shapes)}")
    if problems:
        raise CheckpointError(f"checkpoint ({layout} layout) does not match the spec: " + "; ".join(problems))


def _to(tensor: Tensor, device: torch.device, keep_kernels: bool) -> Tensor:
    """Move to ``device``; floats become float64, except conv kernels when fusion only scales them
    (the fused result is float64 by type promotion; the net is upcast whole only to be validated)."""
    if not tensor.is_floating_point() or (keep_kernels and tensor.ndim == 4):
        return tensor.to(device=device)
    return tensor.to(device=device, dtype=torch.float64)
