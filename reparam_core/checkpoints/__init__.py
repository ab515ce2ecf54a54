"""Checkpoints: read safely, recognise their layout, load them strictly, describe them.

``reading`` (safetensors, or torch files through weights-only unpickling: nothing in a file is
ever executed; wrappers and prefixes removed; NaN/Inf refused), ``key_formats`` (our layout, the
papers' official code, timm and MMPretrain, mapped onto ours), ``loading`` (into a training net,
strictly) and ``inspection`` (what a checkpoint is, from its keys alone: ``reparam inspect``).
"""

from .inspection import CheckpointInfo, inspect_checkpoint, inspect_state
from .key_formats import FORMATS, KeyFormat, detect_format, guess_family, identify_format, is_deploy_form
from .loading import fits, load_into, load_strictly
from .reading import Checkpoint, Weights, check_values, listing, read_checkpoint, select_weights, unwrap

__all__ = [
    "FORMATS",
    "Checkpoint",
    "CheckpointInfo",
    "KeyFormat",
    "Weights",
    "check_values",
    "detect_format",
    "fits",
    "guess_family",
    "identify_format",
    "inspect_checkpoint",
    "inspect_state",
    "is_deploy_form",
    "listing",
    "load_into",
    "load_strictly",
    "read_checkpoint",
    "select_weights",
    "unwrap",
]
