"""Re-parameterizable block families, registered by name in :data:`BLOCKS`."""

from __future__ import annotations

from ..registry import Registry
from .acb import ACBlock
from .base import ReparamBlock
from .conv_bn import ConvBNBlock
from .csla import LinearAddBlock
from .dbb import DiverseBranchBlock
from .mobileone import MobileOneBlock
from .orepa import OREPABlock, OREPALargeBlock
from .repvgg import RepVGGBlock

BLOCKS: Registry[type[ReparamBlock]] = Registry("block family")
for _cls in (
    ConvBNBlock,
    RepVGGBlock,
    ACBlock,
    DiverseBranchBlock,
    OREPABlock,
    OREPALargeBlock,
    MobileOneBlock,
    LinearAddBlock,
):
    BLOCKS.add(_cls.family, _cls)


def register_block(cls: type[ReparamBlock]) -> type[ReparamBlock]:
    """Class decorator for a user-defined family; its ``family`` attribute is the name."""
    BLOCKS.add(cls.family, cls)
    return cls


__all__ = [
    "BLOCKS",
    "ACBlock",
    "ConvBNBlock",
    "DiverseBranchBlock",
    "LinearAddBlock",
    "MobileOneBlock",
    "OREPABlock",
    "OREPALargeBlock",
    "RepVGGBlock",
    "ReparamBlock",
    "register_block",
]
