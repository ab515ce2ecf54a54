"""reparam_core: fuse structurally re-parameterized CNNs into plain conv nets, exactly.

Pure PyTorch; no web imports. See ``kernels`` for the math, ``blocks`` for the families.
"""

from __future__ import annotations

import os

# Fusing a 100M-parameter net allocates gigabytes that the kernel otherwise faults in 4 KiB at a
# time; transparent huge pages make CPU conversion about 3x faster. Effective only when set before
# torch's first allocation; export THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .blocks import BLOCKS, ReparamBlock, register_block
from .build import build_deploy_model, build_train_model
from .convert import ConversionReport, ConversionResult, convert
from .errors import (
    CheckpointError,
    ConversionError,
    EquivalenceError,
    ReparamError,
    SpecError,
    UnknownNameError,
)
from .plain import ConvLayerSpec, DeploySpec, FusedConv, PlainNet, StagedNet
from .reparameterize import count_convs, reparameterize
from .serving import ServingModel, ServingOptions, ServingReport
from .spec import ArchSpec, parse_spec
from .validate import EquivalenceReport, check_equivalence

__all__ = [
    "BLOCKS",
    "ArchSpec",
    "CheckpointError",
    "ConvLayerSpec",
    "ConversionError",
    "ConversionReport",
    "ConversionResult",
    "DeploySpec",
    "EquivalenceError",
    "EquivalenceReport",
    "FusedConv",
    "PlainNet",
    "ReparamBlock",
    "ReparamError",
    "ServingModel",
    "ServingOptions",
    "ServingReport",
    "SpecError",
    "StagedNet",
    "UnknownNameError",
    "build_deploy_model",
    "build_train_model",
    "check_equivalence",
    "convert",
    "count_convs",
    "parse_spec",
    "register_block",
    "reparameterize",
]
