"""ArchSpec -> training model; DeploySpec -> PlainNet (the fused weights load straight into it)."""

from __future__ import annotations

from typing import Any

import torch

from . import presets
from .errors import SpecError
from .layers import HeadSpec, SESpec
from .nets import BlockSpec, build_staged_net
from .plain import DeploySpec, PlainNet, StagedNet
from .spec import ArchSpec, SEOptions, StageSpec, StemSpec, parse_spec


def expand_stages(spec: ArchSpec) -> tuple[StemSpec, list[StageSpec]]:
    """The explicit stem and stages of ``spec`` (a preset is expanded to its published layout)."""
    if spec.variant is None:
        assert spec.stem is not None and spec.stages is not None  # guaranteed by ArchSpec validation
        return spec.stem, spec.stages
    if spec.family == "mobileone":
        mobile = presets.MOBILEONE[spec.variant]
        stem = StemSpec(width=min(64, int(64 * mobile.widths[0])))
        stages = [
            StageSpec(
                depth=depth,
                width=int(base * mult),
                se=SEOptions() if se_pairs else None,
                se_blocks=se_pairs or None,
            )
            for depth, base, mult, se_pairs in zip(
                presets.MOBILEONE_PAIRS, presets.BASE_WIDTHS, mobile.widths, mobile.se_pairs, strict=True
            )
        ]
        return stem, stages
    vgg = (presets.REPVGG if spec.family == "repvgg" else presets.REPOPT_VGG)[spec.variant]
    se = SEOptions() if vgg.se else None
    stem = StemSpec(width=min(64, int(64 * vgg.widths[0])))
    stages, index = [], 1
    for depth, base, mult in zip(vgg.num_blocks, presets.BASE_WIDTHS, vgg.widths, strict=True):
        groups = [vgg.groups if index + j in presets.grouped_layers() else 1 for j in range(depth)]
        stages.append(StageSpec(depth=depth, width=int(base * mult), groups=groups, se=se))
        index += depth
    return stem, stages


def _stem_has_se(spec: ArchSpec) -> bool:
    return spec.variant is not None and spec.family == "repvgg" and presets.REPVGG[spec.variant].se


def block_layout(spec: ArchSpec) -> tuple[BlockSpec, list[list[BlockSpec]]]:
    """Every block of the net as a :class:`BlockSpec`, stage by stage."""
    stem_spec, stage_specs = expand_stages(spec)
    common: dict[str, Any] = {
        "padding_mode": spec.padding_mode,
        "activation": spec.activation,
        "bn_eps": spec.bn_eps,
    }
    family = spec.block_family

    def se_for(width: int, options: SEOptions | None) -> SESpec | None:
        if options is None:
            return None
        return SESpec(rd_channels=max(1, width // options.reduction), placement=options.placement)

    mobile = spec.family == "mobileone"
    branches = spec.num_branches or (
        presets.MOBILEONE[spec.variant].num_branches if mobile and spec.variant else 1
    )
    stem_options = {"num_branches": 1} if mobile else dict(spec.block_options)
    stem_se = se_for(stem_spec.width, SEOptions()) if _stem_has_se(spec) else None
    stem = BlockSpec(
        family=family,
        out_channels=stem_spec.width,
        kernel_size=stem_spec.kernel_size,
        stride=stem_spec.stride,
        se=stem_se,
        options=stem_options,
        **common,
    )
    channels = stem_spec.width
    stages: list[list[BlockSpec]] = []
    for stage in stage_specs:
        blocks = []
        for j in range(stage.depth):
            stride = stage.stride if j == 0 else 1
            se = se_for(stage.width, stage.se_at(j))
            if mobile:
                opts = {"num_branches": branches, **spec.block_options}
                dw_se = se_for(channels, stage.se_at(j))
                blocks.append(
                    BlockSpec(
                        family=family,
                        out_channels=channels,
                        kernel_size=stage.kernel_size,
                        stride=stride,
                        groups=channels,
                        dilation=stage.dilation,
                        se=dw_se,
                        options=opts,
                        **common,
                    )
                )
                blocks.append(
                    BlockSpec(
                        family=family,
                        out_channels=stage.width,
                        kernel_size=1,
                        groups=stage.groups_at(j),
                        se=se,
                        options=opts,
                        **common,
                    )
                )
            else:
                blocks.append(
                    BlockSpec(
                        family=family,
                        out_channels=stage.width,
                        kernel_size=stage.kernel_size,
                        stride=stride,
                        groups=stage.groups_at(j),
                        dilation=stage.dilation,
                        se=se,
                        options=dict(spec.block_options),
                        **common,
                    )
                )
            channels = stage.width
        stages.append(blocks)
    return stem, stages


def build_train_model(spec: ArchSpec | dict | str, device: torch.device | str | None = None) -> StagedNet:
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


def build_deploy_model(deploy_spec: DeploySpec | dict | str) -> PlainNet:
    """The plain deploy network; ``load_state_dict`` the fused ``model.safetensors`` into it."""
    spec = deploy_spec if isinstance(deploy_spec, DeploySpec) else DeploySpec.parse(deploy_spec)
    return PlainNet(spec)
