"""Build whole training networks (stem -> stages -> head) from per-block settings.

``build_staged_net`` turns a list of :class:`BlockSpec` per stage into a :class:`StagedNet` of
registered blocks; ``build.py`` produces those lists from an ``ArchSpec``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .blocks import BLOCKS
from .layers import ClassifierHead, HeadSpec, SESpec
from .plain import PaddingMode, StagedNet


class BlockSpec(BaseModel):
    """One block of a net: family and conv options; ``options`` are family-specific keywords."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    out_channels: int = Field(gt=0)
    kernel_size: int = 3
    stride: int = Field(default=1, gt=0)
    groups: int = Field(default=1, gt=0)
    dilation: int = Field(default=1, gt=0)
    padding_mode: PaddingMode = "zeros"
    activation: str = "relu"
    se: SESpec | None = None
    bn_eps: float = Field(default=1e-5, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


def build_block(spec: BlockSpec, in_channels: int) -> nn.Module:
    cls = BLOCKS.get(spec.family)
    block = cls(
        in_channels,
        spec.out_channels,
        spec.kernel_size,
        stride=spec.stride,
        groups=spec.groups,
        dilation=spec.dilation,
        padding_mode=spec.padding_mode,
        activation=spec.activation,
        se=spec.se,
        **spec.options,
    )
    for module in block.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = spec.bn_eps
    return block


def build_staged_net(
    in_channels: int, stem: BlockSpec, stages: list[list[BlockSpec]], head: HeadSpec | None
) -> StagedNet:
    """Instantiate every block in order, threading channel counts through."""
    stem_block = build_block(stem, in_channels)
    channels = stem.out_channels
    built: list[list[nn.Module]] = []
    for stage in stages:
        blocks = []
        for block in stage:
            blocks.append(build_block(block, channels))
            channels = block.out_channels
        built.append(blocks)
    return StagedNet(stem_block, built, ClassifierHead(head) if head is not None else None)
