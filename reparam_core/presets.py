"""Published architecture presets, expanded to explicit stages.

RepVGG and RepOpt-VGG: stem min(64, 64a), stages 64a, 128a, 256a, 512b, each starting at stride 2;
grouped layers (g2/g4) are 2, 4, ..., 26 counted from the stem = 0. MobileOne: each stage entry is
a depthwise kxk + pointwise 1x1 pair; S0 trains 4 kxk branches; S4 has SE on the last 5 pairs of
stage 3 and all of stage 4.
"""

from __future__ import annotations

from typing import NamedTuple


class VGGPreset(NamedTuple):
    num_blocks: tuple[int, int, int, int]
    widths: tuple[float, float, float, float]  # multipliers of 64, 128, 256, 512
    groups: int = 1
    se: bool = False


_G_LAYERS = tuple(range(2, 27, 2))

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


class MobileOnePreset(NamedTuple):
    widths: tuple[float, float, float, float]
    num_branches: int = 1
    se_pairs: tuple[int, int, int, int] = (0, 0, 0, 0)


MOBILEONE_PAIRS = (2, 8, 10, 1)

MOBILEONE: dict[str, MobileOnePreset] = {
    "S0": MobileOnePreset((0.75, 1.0, 1.0, 2.0), num_branches=4),
    "S1": MobileOnePreset((1.5, 1.5, 2.0, 2.5)),
    "S2": MobileOnePreset((1.5, 2.0, 2.5, 4.0)),
    "S3": MobileOnePreset((2.0, 2.5, 3.0, 4.0)),
    "S4": MobileOnePreset((3.0, 3.5, 3.5, 4.0), se_pairs=(0, 0, 5, 1)),
}

BASE_WIDTHS = (64, 128, 256, 512)
SE_REDUCTION = 16


def grouped_layers() -> tuple[int, ...]:
    """Layer indices (stem = 0) that use grouped convs in the g2/g4 variants."""
    return _G_LAYERS
