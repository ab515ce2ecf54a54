"""Options a family cannot fuse exactly are refused at construction, with the reason."""

from __future__ import annotations

import pytest

from reparam_core import BLOCKS, SpecError
from reparam_core.blocks import (
    ACBlock,
    DiverseBranchBlock,
    MobileOneBlock,
    OREPALargeBlock,
    QARepVGGAvgBlock,
    RepVGGBlock,
)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiverseBranchBlock(8, 8, 3, dilation=2), "dilation=2 cannot be fused"),
        (lambda: QARepVGGAvgBlock(8, 8, 3, dilation=2), "dilation=2 cannot be fused"),
        (lambda: ACBlock(8, 8, 1), "kernel_size=1 not supported"),
        (lambda: RepVGGBlock(8, 8, 4), "kernel_size=4 not supported"),
        (lambda: OREPALargeBlock(8, 8, 3), "kernel_size=3 not supported"),
        (lambda: RepVGGBlock(6, 8, 3, groups=4), "groups=4 must divide"),
        (lambda: RepVGGBlock(8, 8, 3, padding_mode="mirror"), "padding_mode='mirror' unknown"),
        (lambda: RepVGGBlock(8, 8, 3, stride=0), "must be positive"),
        (lambda: MobileOneBlock(8, 8, 3, num_branches=0), "num_branches=0"),
        (lambda: DiverseBranchBlock(8, 8, 3, groups=4, internal_channels=6), "internal_channels=6"),
        (lambda: RepVGGBlock(8, 8, 3, activation="swishy"), "unknown activation 'swishy'"),
    ],
)
def test_unsupported_options_raise_clear_errors(make: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("family", BLOCKS.names())
def test_identity_branch_only_when_shapes_allow(family: str) -> None:
    cls = BLOCKS.get(family)
    k = cls.kernel_sizes[-1]
    assert cls(8, 8, k).has_identity
    assert not cls(8, 8, k, stride=2).has_identity
    assert not cls(8, 16, k).has_identity
