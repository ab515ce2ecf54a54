"""ArchSpec -> training model: the family's layout, then every block instantiated in order."""

from __future__ import annotations

from typing import Any

import torch

from ..deploy.net import StagedNet
from ..errors import SpecError
from ..layers import HeadSpec
from .layout import Layout, Stages, build_staged_net
from .spec import ArchSpec, parse_spec


def expand_stages(spec: ArchSpec) -> Stages:
    """The explicit stem and stages of ``spec`` (a preset is expanded to its published layout)."""
    if spec.variant is None:
        assert spec.stem is not None and spec.stages is not None  # guaranteed by ArchSpec validation
        return spec.stem, spec.stages
    return spec.family_info.expand(spec.variant)


def block_layout(spec: ArchSpec) -> Layout:
    """Every block of the net as a :class:`BlockSpec`, stage by stage (the family's layout)."""
    return spec.family_info.layout(spec, expand_stages(spec))


def build_train_model(
    spec: ArchSpec | dict[str, Any] | str, device: torch.device | str | None = None
) -> StagedNet:
    """The training-form network of ``spec``. On ``device="meta"`` no weights are allocated or
    initialised (fast when a checkpoint is loaded with ``assign=True`` right after)."""
    arch = parse_spec(spec)
    stem, stages = block_layout(arch)
    head = HeadSpec(
        in_features=stages[-1][-1].out_channels if stages else stem.out_channels, num_classes=arch.num_classes
    )
    try:
        with torch.device(device or "cpu"):
            return build_staged_net(arch.in_channels, stem, stages, head)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(f"spec {arch.name}: {exc}") from None
