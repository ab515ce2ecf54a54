"""What a checkpoint is, from its keys alone: layout, form, family, blocks, parameters."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel
from torch import Tensor

from .key_formats import guess_family, identify_format, is_deploy_form
from .reading import read_checkpoint

BLOCK_PREFIX = re.compile(r"^(stem|stages\.\d+\.\d+)\.")
STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


class CheckpointInfo(BaseModel):
    path: str
    format: str
    form: str
    family: str | None
    blocks: int
    parameters: int
    tensors: int
    notes: list[str]


def inspect_state(
    state: dict[str, Tensor], path: str = "<state dict>", notes: list[str] | None = None
) -> CheckpointInfo:
    layout = identify_format(state)
    mapped = layout.apply(state)
    blocks = {m.group(1) for k in mapped if (m := BLOCK_PREFIX.match(k))}
    parameters = sum(
        v.numel() for k, v in state.items() if v.is_floating_point() and not k.endswith(STAT_SUFFIXES)
    )
    return CheckpointInfo(
        path=path,
        format=layout.name,
        form="deploy" if is_deploy_form(state) or _fused_native(mapped) else "train",
        family=guess_family(state),
        blocks=len(blocks),
        parameters=parameters,
        tensors=len(state),
        notes=notes or [],
    )


def _fused_native(state: dict[str, Tensor]) -> bool:
    """Our own deploy layout: every block is ``conv.weight`` + ``conv.bias`` and there is no BN
    (but the one after an SE gate, ``se.bn``: QARepVGG's post-sum BN, kept in the deploy net)."""
    has_bias = any(k.endswith(".conv.bias") and BLOCK_PREFIX.match(k) for k in state)
    return has_bias and not any(k.endswith("running_var") and ".se.bn." not in k for k in state)


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    loaded = read_checkpoint(path)
    return inspect_state(loaded.state, str(path), loaded.notes)
