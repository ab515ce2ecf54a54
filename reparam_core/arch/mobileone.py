"""MobileOne nets (Vasu et al., CVPR 2023): each stage entry is a depthwise kxk block followed by
a pointwise 1x1 block. Presets S0..S4: S0 trains 4 kxk branches; S4 has SE on the last 5 pairs of
stage 3 and on all of stage 4."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .layout import BlockSpec, Family, Layout, Stages, make_block, register_family, se_spec
from .stages import BASE_WIDTHS, SEOptions, StageSpec, StemSpec

if TYPE_CHECKING:
    from .spec import ArchSpec


class MobileOnePreset(NamedTuple):
    widths: tuple[float, float, float, float]  # multipliers of BASE_WIDTHS
    num_branches: int = 1
    se_pairs: tuple[int, int, int, int] = (0, 0, 0, 0)
    crop_pct: float = 0.9  # timm's pretrained configs, bilinear


PAIRS = (2, 8, 10, 1)

MOBILEONE: dict[str, MobileOnePreset] = {
    "S0": MobileOnePreset((0.75, 1.0, 1.0, 2.0), num_branches=4, crop_pct=0.875),
    "S1": MobileOnePreset((1.5, 1.5, 2.0, 2.5)),
    "S2": MobileOnePreset((1.5, 2.0, 2.5, 4.0)),
    "S3": MobileOnePreset((2.0, 2.5, 3.0, 4.0)),
    "S4": MobileOnePreset((3.0, 3.5, 3.5, 4.0), se_pairs=(0, 0, 5, 1)),
}


def expand(variant: str) -> Stages:
    preset = MOBILEONE[variant]
    stem = StemSpec(width=min(64, int(64 * preset.widths[0])))
    stages = [
        StageSpec(
            depth=depth,
            width=int(base * mult),
            se=SEOptions() if se_pairs else None,
            se_blocks=se_pairs or None,
        )
        for depth, base, mult, se_pairs in zip(
            PAIRS, BASE_WIDTHS, preset.widths, preset.se_pairs, strict=True
        )
    ]
    return stem, stages


def layout(spec: ArchSpec, stages: Stages) -> Layout:
    """A single-branch stem, then per stage entry a depthwise kxk and a pointwise 1x1 block."""
    stem, stage_specs = stages
    branches = spec.num_branches or (MOBILEONE[spec.variant].num_branches if spec.variant else 1)
    options = {"num_branches": branches, **spec.block_options}
    stem_block = make_block(
        spec, {"num_branches": 1}, out_channels=stem.width, kernel_size=stem.kernel_size, stride=stem.stride
    )
    channels = stem.width
    blocks: list[list[BlockSpec]] = []
    for stage in stage_specs:
        pairs = []
        for j in range(stage.depth):
            se = stage.se_at(j)
            depthwise = make_block(
                spec,
                options,
                out_channels=channels,
                kernel_size=stage.kernel_size,
                stride=stage.stride if j == 0 else 1,
                groups=channels,
                dilation=stage.dilation,
                se=se_spec(channels, se),
            )
            pointwise = make_block(
                spec,
                options,
                out_channels=stage.width,
                kernel_size=1,
                groups=stage.groups_at(j),
                se=se_spec(stage.width, se),
            )
            pairs += [depthwise, pointwise]
            channels = stage.width
        blocks.append(pairs)
    return stem_block, blocks


register_family(
    Family(
        name="mobileone",
        default_block="mobileone",
        allowed_blocks=frozenset({"mobileone"}),
        presets=MOBILEONE,
        expand=expand,
        layout=layout,
        preprocess=lambda variant: {"crop_pct": MOBILEONE[variant].crop_pct} if variant in MOBILEONE else {},
    )
)
