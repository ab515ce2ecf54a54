"""RepVGG-style nets (``repvgg``, ``repopt_vgg``, ``qarepvgg``): a stem then four stages of kxk blocks.

Presets: stem min(64, 64a), stages 64a, 128a, 256a, 512b, each starting at stride 2; grouped
layers (g2/g4) are 2, 4, ..., 26 counted from the stem = 0. ``repvgg`` nets may hold any
registered block family (``block``: acb, dbb, orepa, csla...); RepOpt-VGG trains plain conv-BN
blocks (``conv_bn``) or their CSLA form; QARepVGG nets (RepVGG's presets, as cxxgtxy/QARepVGG
builds them) hold one of the QARepVGG block forms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .layout import Family, Layout, Stages, make_block, register_family, se_spec
from .stages import BASE_WIDTHS, SEOptions, StageSpec, StemSpec

if TYPE_CHECKING:
    from .spec import ArchSpec


class VGGPreset(NamedTuple):
    num_blocks: tuple[int, int, int, int]
    widths: tuple[float, float, float, float]  # multipliers of BASE_WIDTHS
    groups: int = 1
    se: bool = False


GROUPED_LAYERS = frozenset(range(2, 27, 2))
_A = (2, 4, 14, 1)
_B = (4, 6, 16, 1)
_D = (8, 14, 24, 1)

REPVGG: dict[str, VGGPreset] = {
    "A0": VGGPreset(_A, (0.75, 0.75, 0.75, 2.5)),
    "A1": VGGPreset(_A, (1, 1, 1, 2.5)),
    "A2": VGGPreset(_A, (1.5, 1.5, 1.5, 2.75)),
    "B0": VGGPreset(_B, (1, 1, 1, 2.5)),
    "B1": VGGPreset(_B, (2, 2, 2, 4)),
    "B1g2": VGGPreset(_B, (2, 2, 2, 4), groups=2),
    "B1g4": VGGPreset(_B, (2, 2, 2, 4), groups=4),
    "B2": VGGPreset(_B, (2.5, 2.5, 2.5, 5)),
    "B2g2": VGGPreset(_B, (2.5, 2.5, 2.5, 5), groups=2),
    "B2g4": VGGPreset(_B, (2.5, 2.5, 2.5, 5), groups=4),
    "B3": VGGPreset(_B, (3, 3, 3, 5)),
    "B3g2": VGGPreset(_B, (3, 3, 3, 5), groups=2),
    "B3g4": VGGPreset(_B, (3, 3, 3, 5), groups=4),
    "D2se": VGGPreset(_D, (2.5, 2.5, 2.5, 5), se=True),
}

REPOPT_VGG: dict[str, VGGPreset] = {
    "B1": VGGPreset(_B, (2, 2, 2, 4)),
    "B2": VGGPreset(_B, (2.5, 2.5, 2.5, 5)),
    "L1": VGGPreset(_D, (2, 2, 2, 4)),
    "L2": VGGPreset(_D, (2.5, 2.5, 2.5, 5)),
}


def expand(preset: VGGPreset) -> Stages:
    """A preset's explicit stem and stages (SE on every block of D2se)."""
    se = SEOptions() if preset.se else None
    stem = StemSpec(width=min(64, int(64 * preset.widths[0])))
    stages, index = [], 1
    for depth, base, mult in zip(preset.num_blocks, BASE_WIDTHS, preset.widths, strict=True):
        groups = [preset.groups if index + j in GROUPED_LAYERS else 1 for j in range(depth)]
        stages.append(StageSpec(depth=depth, width=int(base * mult), groups=groups, se=se))
        index += depth
    return stem, stages


def layout(spec: ArchSpec, stages: Stages) -> Layout:
    """One block per stage entry; SE on the stem too for SE presets (RepVGG-D2se)."""
    stem, stage_specs = stages
    options = spec.block_options
    stem_se = SEOptions() if spec.variant is not None and spec.family_info.presets[spec.variant].se else None
    stem_block = make_block(
        spec,
        options,
        out_channels=stem.width,
        kernel_size=stem.kernel_size,
        stride=stem.stride,
        se=se_spec(stem.width, stem_se),
    )
    blocks = [
        [
            make_block(
                spec,
                options,
                out_channels=stage.width,
                kernel_size=stage.kernel_size,
                stride=stage.stride if j == 0 else 1,
                groups=stage.groups_at(j),
                dilation=stage.dilation,
                se=se_spec(stage.width, stage.se_at(j)),
            )
            for j in range(stage.depth)
        ]
        for stage in stage_specs
    ]
    return stem_block, blocks


register_family(
    Family(
        name="repvgg",
        default_block="repvgg",
        allowed_blocks=None,
        presets=REPVGG,
        expand=lambda variant: expand(REPVGG[variant]),
        layout=layout,
        # timm's pretrained configs: Resize(256) + CenterCrop(224), bilinear; D2se at 320, uncropped
        preprocess=lambda variant: {"crop": 320, "crop_pct": 1.0} if variant == "D2se" else {},
    )
)
register_family(
    Family(
        name="repopt_vgg",
        default_block="conv_bn",
        allowed_blocks=frozenset({"conv_bn", "csla"}),
        presets=REPOPT_VGG,
        expand=lambda variant: expand(REPOPT_VGG[variant]),
        layout=layout,
        # RepOptimizers' own evaluation (TEST.CROP off): Resize(224) + CenterCrop(224), bilinear
        preprocess=lambda variant: {"crop_pct": 1.0},
    )
)
register_family(
    Family(
        name="qarepvgg",
        default_block="qarepvgg",
        allowed_blocks=frozenset({"qarepvgg", "qarepvgg_v1", "qarepvgg_avg"}),
        presets=REPVGG,
        expand=lambda variant: expand(REPVGG[variant]),
        layout=layout,
        # cxxgtxy/QARepVGG's evaluation: Resize(256, bicubic) + CenterCrop(224)
        preprocess=lambda variant: {"interpolation": "bicubic"},
    )
)
