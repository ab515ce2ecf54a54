"""Fused conv vs training form for every registered family, over every option it supports.

fp64 must agree to <= 1e-12 relative (exact fusion gives ~1e-15); the fp32 error is recorded
(``record_property``, visible with ``--junitxml``) and bounded.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reparam_core import BLOCKS, check_equivalence, reparameterize
from reparam_core.layers import SESpec
from tests.helpers import randomize_

FAMILIES = BLOCKS.names()


@st.composite
def block_options(draw: st.DrawFn, family: str) -> dict:
    cls = BLOCKS.get(family)
    groups = draw(st.sampled_from([1, 2, 4, 8]))  # 8 == channels: depthwise
    kernel_size = draw(st.sampled_from(cls.kernel_sizes))
    assume(cls.unsupported(kernel_size, groups) is None)  # what the family refuses, by name
    in_ch = 8
    out_ch = draw(st.sampled_from([8, 16]))
    se = draw(
        st.none()
        | st.builds(SESpec, rd_channels=st.just(4), placement=st.sampled_from(["pre_act", "post_act"]))
    )
    return {
        "in_channels": in_ch,
        "out_channels": out_ch,
        "kernel_size": kernel_size,
        "stride": draw(st.sampled_from([1, 2])),
        "groups": groups,
        "dilation": draw(st.sampled_from([1, 2])) if cls.supports_dilation else 1,
        "padding_mode": draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
        "activation": draw(st.sampled_from(["relu", "identity", "silu"])),
        "se": se,
    }


def build(family: str, options: dict) -> torch.nn.Module:
    opts = dict(options)
    block = BLOCKS.get(family)(
        opts.pop("in_channels"), opts.pop("out_channels"), opts.pop("kernel_size"), **opts
    )
    return randomize_(block.double()).eval()


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), height=st.integers(9, 17), width=st.integers(9, 17))
def test_fused_block_matches_training_form(family: str, data: st.DataObject, height: int, width: int) -> None:
    options = data.draw(block_options(family))
    block = build(family, options)
    fused = reparameterize(block)
    shape = (2, options["in_channels"], height, width)
    report = check_equivalence(block, fused, shape, device="cpu", tolerance=1e-12)
    assert report.passed, f"{family} {options}: fp64 rel error {report.max_rel_error:.3e}"


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_error_is_reported_and_small(family: str, record_property: pytest.RecordProperty) -> None:
    cls = BLOCKS.get(family)
    kernel_size = cls.kernel_sizes[-1]
    options = {
        "in_channels": 8,
        "out_channels": 8,
        "kernel_size": kernel_size,
        "stride": 1,
        "groups": 2 if cls.unsupported(kernel_size, 2) is None else 1,
        "dilation": 1,
        "padding_mode": "zeros",
        "activation": "relu",
        "se": None,
    }
    block = build(family, options)
    fused = reparameterize(block)
    report = check_equivalence(
        block.float(), fused.float(), (2, 8, 15, 11), dtype=torch.float32, device="cpu"
    )
    record_property("fp32_max_rel_error", report.max_rel_error)
    assert 0 < report.max_rel_error < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_equivalent_kernel_is_differentiable(family: str) -> None:
    block = build(
        family,
        {
            "in_channels": 8,
            "out_channels": 8,
            "kernel_size": BLOCKS.get(family).kernel_sizes[0],
            "stride": 1,
            "groups": 1,
            "dilation": 1,
            "padding_mode": "zeros",
            "activation": "relu",
            "se": None,
        },
    )
    kernel, bias = block.equivalent_kernel_bias()
    (kernel.sum() + bias.sum()).backward()
    grads = [p.grad for p in block.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
