"""Re-parameterizable block families, one module each, registered by name in :data:`BLOCKS`.

A block holds only its training form plus ``equivalent_kernel_bias()`` (``base``); ``branches``
holds the linear branch modules the families are made of. Register your own family with
``@register_block`` on a :class:`ReparamBlock` subclass.
"""

from __future__ import annotations

from .acb import ACBlock
from .base import BLOCKS, ConvOptions, ReparamBlock, register_block
from .conv_bn import ConvBNBlock
from .csla import LinearAddBlock
from .dbb import DiverseBranchBlock
from .mobileone import MobileOneBlock
from .orepa import OREPABlock, OREPALargeBlock, OREPAVGGBlock
from .qarepvgg import QARepVGGAvgBlock, QARepVGGBlock, QARepVGGV1Block
from .repvgg import RepVGGBlock

__all__ = [
    "BLOCKS",
    "ACBlock",
    "ConvBNBlock",
    "ConvOptions",
    "DiverseBranchBlock",
    "LinearAddBlock",
    "MobileOneBlock",
    "OREPABlock",
    "OREPALargeBlock",
    "OREPAVGGBlock",
    "QARepVGGAvgBlock",
    "QARepVGGBlock",
    "QARepVGGV1Block",
    "RepVGGBlock",
    "ReparamBlock",
    "register_block",
]
