"""Build whole training networks (stem -> stages -> head) from per-block settings.

``repvgg_layout`` and ``mobileone_layout`` produce the published layouts; ``build_staged_net``
turns any layout into a :class:`StagedNet` of registered blocks.
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
    options: dict[str, Any] = Field(default_factory=dict)


def build_block(spec: BlockSpec, in_channels: int) -> nn.Module:
    cls = BLOCKS.get(spec.family)
    return cls(
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


def repvgg_layout(
    num_blocks: list[int],
    width_multipliers: list[float],
    *,
    family: str = "repvgg",
    group_layers: tuple[int, ...] = (),
    groups: int = 1,
    se_reduction: int | None = None,
    **block_options: Any,
) -> tuple[BlockSpec, list[list[BlockSpec]]]:
    """The RepVGG layout: stem of min(64, 64a) then four stages (64a, 128a, 256a, 512b), each
    starting with stride 2. Layers listed in ``group_layers`` (counted from the stem = 0) use ``groups``."""
    a, b = width_multipliers[0], width_multipliers[3]
    widths = [int(64 * a), int(128 * width_multipliers[1]), int(256 * width_multipliers[2]), int(512 * b)]
    stem_width = min(64, int(64 * a))

    def block(width: int, stride: int, index: int) -> BlockSpec:
        se = SESpec(rd_channels=width // se_reduction) if se_reduction else None
        g = groups if index in group_layers else 1
        return BlockSpec(family=family, out_channels=width, stride=stride, groups=g, se=se, **block_options)

    stem = block(stem_width, 2, 0)
    stages, index = [], 1
    for count, width in zip(num_blocks, widths, strict=True):
        stage = []
        for i in range(count):
            stage.append(block(width, 2 if i == 0 else 1, index))
            index += 1
        stages.append(stage)
    return stem, stages
