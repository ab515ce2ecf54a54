"""From a spec to blocks: :class:`BlockSpec` per block, the family registry, and instantiation.

Each architecture family (``vgg.py``, ``mobileone.py``) registers a :class:`Family`: its presets,
which block families it can hold, its *layout*, the function that turns an ``ArchSpec`` into one
:class:`BlockSpec` per block, stage by stage, and its evaluation preprocessing. :func:`build_staged_net`
instantiates them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..blocks import BLOCKS
from ..deploy.net import StagedNet
from ..deploy.spec import PaddingMode
from ..layers import ClassifierHead, HeadSpec, SESpec
from ..registry import Registry
from .stages import SEOptions, StageSpec, StemSpec

if TYPE_CHECKING:
    from .spec import ArchSpec


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


Stages = tuple[StemSpec, list[StageSpec]]
Layout = tuple[BlockSpec, list[list[BlockSpec]]]


@dataclass(frozen=True)
class Family:
    """An architecture family: presets by variant name, the block families it holds (``None``:
    any registered one), how a preset expands to stages, how stages become blocks, and how a
    variant's reference code evaluates it (``Preprocess`` fields over its defaults; a custom net
    is ``variant=None``)."""

    name: str
    default_block: str
    allowed_blocks: frozenset[str] | None
    presets: Mapping[str, Any]
    expand: Callable[[str], Stages]
    layout: Callable[[ArchSpec, Stages], Layout]
    preprocess: Callable[[str | None], dict[str, Any]]


FAMILIES: Registry[Family] = Registry("family")


def register_family(family: Family) -> Family:
    FAMILIES.add(family.name, family)
    return family


def se_spec(width: int, options: SEOptions | None) -> SESpec | None:
    """The SE layer of a block of ``width`` channels (``None`` where the stage has none there)."""
    if options is None:
        return None
    return SESpec(rd_channels=max(1, width // options.reduction), placement=options.placement)


def make_block(spec: ArchSpec, options: Mapping[str, Any], **fields: Any) -> BlockSpec:
    """A block of ``spec``'s block family with what every block of the net shares (padding mode,
    activation, BN epsilon), the family ``options`` and the block's own ``fields``."""
    return BlockSpec(
        family=spec.block_family,
        padding_mode=spec.padding_mode,
        activation=spec.activation,
        bn_eps=spec.bn_eps,
        options=dict(options),
        **fields,
    )


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
