"""The largest and smallest nets a spec may describe, and the cost of the net it does describe.

Structural bounds (checked by the spec models) keep every derived size finite before anything is
built: a spec cannot ask for 10^5 blocks, a 10^6-pixel side or a zero group count. Within them,
:func:`estimate_cost` gives the deploy net's parameters and multiply-accumulates at the spec's
input size, computed from the layout alone (nothing allocated), for callers that budget work
(the service refuses conversions above its ``max_conversion_gmacs``/``max_conversion_params``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .spec import ArchSpec

MAX_SPEC_CHARS = 256 * 1024  # a spec's JSON/YAML text
MAX_SPEC_NESTING = 32  # containers inside containers in that text
MAX_STAGES = 16
MAX_DEPTH = 64  # blocks per stage
MAX_WIDTH = 8192  # channels of a stage or the stem
MAX_KERNEL = 15
MAX_STRIDE = 4
MAX_DILATION = 8
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 64
MAX_BRANCHES = 16
MAX_INPUT_SIDE = 2048
MAX_BN_EPS = 1.0


class Cost(NamedTuple):
    """The deploy net at the spec's input size: parameters and multiply-accumulates per image."""

    params: int
    macs: int


def estimate_cost(spec: ArchSpec) -> Cost:
    """Parameters and MACs of the fused (deploy) net, from the layout (no module is built)."""
    from .build import block_layout

    stem, stages = block_layout(spec)
    height, width = spec.input_size
    channels, params, macs = spec.in_channels, 0, 0
    for block in [stem, *(b for stage in stages for b in stage)]:
        weights = block.kernel_size**2 * (channels // block.groups) * block.out_channels + block.out_channels
        height, width = math.ceil(height / block.stride), math.ceil(width / block.stride)
        params += weights
        macs += weights * height * width
        channels = block.out_channels
    head = channels * spec.num_classes + spec.num_classes
    return Cost(params + head, macs + head)
