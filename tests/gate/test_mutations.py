"""Every known class of fusion bug (REPARAM_FACTS.md), injected into the fusion or the deploy net of
each family it applies to, is rejected by the conversion gate; the unmutated nets pass.

Each mutation is small where the bug is: a dropped BN eps moves weights by ~1e-5 relative, a fusion
in float32 by ~1e-7, a float32 1/k^2 by ~1e-8, a padding mismatch touches border pixels only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam_core import EquivalenceError
from reparam_core.blocks import BLOCKS
from reparam_core.blocks.base import ReparamBlock
from reparam_core.blocks.branches import BNAndPad
from reparam_core.conversion import convert
from reparam_core.deploy import net as deploy_net
from reparam_core.fusion import row_blocks, transforms
from reparam_core.layers import SqueezeExcite
from tests.helpers import state_of

SE = {"reduction": 4}


def vgg(block: str, **stage: Any) -> dict[str, Any]:
    """Stem (stride 2), then a stage whose second block has an identity branch with groups=2."""
    return {
        "family": "repvgg",
        "block": block,
        "stem": {"width": 8},
        "stages": [{"depth": 2, "width": 8, "groups": [1, 2], **stage}, {"depth": 1, "width": 16, **stage}],
        "num_classes": 5,
        "input_size": [32, 24],
    }


NETS: dict[str, dict[str, Any]] = {
    "repvgg": vgg("repvgg"),
    "repvgg_se": vgg("repvgg", se=SE),
    "acb": vgg("acb"),
    "dbb": vgg("dbb"),
    "orepa": vgg("orepa"),
    "mobileone": {  # depthwise + pointwise pairs; the second pair has identity branches, groups 2 on the 1x1
        "family": "mobileone",
        "stem": {"width": 8},
        "stages": [{"depth": 2, "width": 8, "groups": [1, 2]}, {"depth": 1, "width": 16, "se": SE}],
        "num_branches": 2,
        "num_classes": 5,
        "input_size": [32, 24],
    },
}
DILATED = {
    name: {**vgg(name), "stages": vgg(name, dilation=2)["stages"]} for name in ("repvgg", "acb", "orepa")
}
DILATED["mobileone"] = {**NETS["mobileone"], "stages": [{"depth": 2, "width": 8, "dilation": 2}]}

Patch = Callable[[pytest.MonkeyPatch], None]


def patch_everywhere(monkeypatch: pytest.MonkeyPatch, original: object, replacement: object) -> None:
    """Replace ``original`` in every reparam_core module that imported it by name."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("reparam_core"):
            for attr, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, attr, replacement)


# --- the fusion --------------------------------------------------------------------------------


def off_centre(monkeypatch: pytest.MonkeyPatch) -> None:
    """1x1 / 1xk / kx1 kernels added at the kxk kernel's top-left instead of its centre."""

    def add_corner_(kernel: Tensor, small: Tensor) -> Tensor:
        kernel[..., : small.shape[-2], : small.shape[-1]] += small
        return kernel

    def pad_corner(kernel: Tensor, size: tuple[int, int]) -> Tensor:
        return F.pad(kernel, [0, size[1] - kernel.shape[-1], 0, size[0] - kernel.shape[-2]])

    patch_everywhere(monkeypatch, transforms.add_centred_, add_corner_)
    patch_everywhere(monkeypatch, transforms.pad_to, pad_corner)


def eps_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """BN folded with eps = 0 instead of the BN's 1e-5."""
    real = transforms.bn_scale_shift

    def no_eps(mean: Tensor, var: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float) -> Any:
        return real(mean, var, gamma, beta, 0.0)

    patch_everywhere(monkeypatch, real, no_eps)


def fusion_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """BN factors computed in float32 (then returned in the caller's dtype)."""
    real = transforms.bn_scale_shift

    def in_float32(mean: Tensor, var: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float) -> Any:
        def f32(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.float()

        scale, shift = real(f32(mean), f32(var), f32(gamma), f32(beta), eps)  # type: ignore[arg-type]
        return scale.to(mean.dtype), shift.to(mean.dtype)

    patch_everywhere(monkeypatch, real, in_float32)


def float32_avg_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    """DBB's averaging kernel built with a float32 1/k^2 (the official DBB converter's defect)."""
    real = transforms.avg_pool_kernel

    def fp32_constant(channels: int, groups: int, kernel_size: int, *, like: Tensor) -> Tensor:
        ones = real(channels, groups, kernel_size, like=like) * (kernel_size * kernel_size)
        return ones * torch.tensor(1.0 / (kernel_size * kernel_size), dtype=torch.float32).to(like.dtype)

    patch_everywhere(monkeypatch, real, fp32_constant)


def identity_wrong_with_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Identity tap of row i at column (i // groups) % (C/groups) instead of i % (C/groups): right
    for groups=1 (and depthwise), wrong for 1 < groups < C."""

    def add_identity_(kernel: Tensor, factors: Tensor, first_row: int = 0) -> Tensor:
        rows, per_group, kh, kw = kernel.shape
        local = torch.arange(rows)
        groups = max(1, (first_row + rows) // per_group)
        columns = ((local + first_row) // groups) % per_group
        index = (local, columns, local.new_tensor(kh // 2), local.new_tensor(kw // 2))
        return kernel.index_put_(index, factors.to(kernel.dtype), accumulate=True)

    patch_everywhere(monkeypatch, transforms.add_identity_, add_identity_)


def permuted_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fused output channels rolled by one (kernel and bias alike)."""
    for cls in {BLOCKS.get(name) for name in BLOCKS.names()}:
        if cls.row_separable:
            real_rows = cls.kernel_bias_rows

            def rows(self: ReparamBlock, r: slice, real: Any = real_rows) -> tuple[Tensor, Tensor]:
                kernel, bias = real(self, r)
                return kernel.roll(1, 0), bias.roll(1, 0)

            monkeypatch.setattr(cls, "kernel_bias_rows", rows)
        else:
            real_all = cls.equivalent_kernel_bias

            def whole(self: ReparamBlock, real: Any = real_all) -> tuple[Tensor, Tensor]:
                kernel, bias = real(self)
                return kernel.roll(1, 0), bias.roll(1, 0)

            monkeypatch.setattr(cls, "equivalent_kernel_bias", whole)


def zero_padded_intermediate(monkeypatch: pytest.MonkeyPatch) -> None:
    """DBB's 1x1 -> kxk branches padded with zeros between the stages, while the fusion pushes the
    first stage's BN bias through the kxk kernel (exact only with BN(0) padding): border pixels differ."""
    monkeypatch.setattr(BNAndPad, "zero_response", lambda self: torch.zeros_like(self.bn.running_mean))


# --- the deploy net ----------------------------------------------------------------------------


def deploy_conv(**override: Any) -> Patch:
    """Deploy layers whose conv is built with ``override`` (stride, padding, dilation), not the spec's."""

    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        real = deploy_net.FusedConv.__init__

        def init(self: deploy_net.FusedConv, spec: Any) -> None:
            real(self, spec)
            c = self.conv
            fields = {"stride": c.stride, "padding": c.padding, "dilation": c.dilation, **override}
            self.conv = nn.Conv2d(
                c.in_channels,
                c.out_channels,
                c.kernel_size,
                groups=c.groups,
                padding_mode=c.padding_mode,
                **fields,
                device=c.weight.device,
                dtype=c.weight.dtype,
            )

        monkeypatch.setattr(deploy_net.FusedConv, "__init__", init)

    return patch


class WidthPooledSE(SqueezeExcite):
    """RepVGG's official SEBlock: pools with a square kernel of the input's width."""

    def forward(self, x: Tensor) -> Tensor:
        s = F.avg_pool2d(x, kernel_size=x.size(3))
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


def se_pooled_by_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy_net, "SqueezeExcite", WidthPooledSE)


def se_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """MMPretrain's RepVGG deploy forward: the SE layer is skipped."""
    real = deploy_net.apply_epilogue
    monkeypatch.setattr(
        deploy_net, "apply_epilogue", lambda x, se, act, placement: real(x, None, act, placement)
    )


ALL = tuple(NETS)
MUTATIONS: list[tuple[str, Patch, tuple[str, ...]]] = [
    ("off-centre 1x1/1xk/kx1", off_centre, ("repvgg", "acb", "dbb", "mobileone")),
    ("BN eps dropped", eps_dropped, ALL),
    ("fusion in float32", fusion_in_float32, ALL),
    ("float32 1/k^2 constant", float32_avg_constant, ("dbb",)),
    ("identity wrong with groups", identity_wrong_with_groups, ("repvgg", "mobileone")),
    ("output channels permuted", permuted_channels, ALL),
    ("1x1->kxk zero padding", zero_padded_intermediate, ("dbb",)),
    ("stride ignored", deploy_conv(stride=1), ALL),
    ("padding dropped", deploy_conv(padding=0), ALL),
    ("SE pooled by width", se_pooled_by_width, ("repvgg_se", "mobileone")),
    ("SE skipped", se_skipped, ("repvgg_se", "mobileone")),
]
CASES = [
    pytest.param(patch, NETS[net], id=f"{name}-{net}") for name, patch, nets in MUTATIONS for net in nets
] + [pytest.param(deploy_conv(dilation=1), DILATED[net], id=f"dilation ignored-{net}") for net in DILATED]
BLOCK_FAILURE = r"equivalence gate failed for .*float64 at (stem|stages\.\d+\.\d+) on "


@pytest.mark.parametrize(
    "spec", [*NETS.values(), *DILATED.values()], ids=[*NETS, *(f"{n}-dilated" for n in DILATED)]
)
def test_unmutated_nets_pass(spec: dict[str, Any]) -> None:
    report = convert(spec, state_of(spec), device="cpu").report
    assert report.passed and max(r.max_rel_error for r in report.fp64) < 1e-13
    assert report.stored_weights is not None and report.stored_weights.passed


@pytest.mark.parametrize(("mutate", "spec"), CASES)
def test_the_gate_rejects_the_mutation(
    mutate: Patch, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = state_of(spec)
    mutate(monkeypatch)
    with pytest.raises(EquivalenceError, match=BLOCK_FAILURE) as info:
        convert(spec, state, device="cpu")
    assert not info.value.report.passed


def test_stored_weights_off_the_verified_ones_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast fusion path alone (what is stored) moves every weight by 1e-6 relative: far below what
    the whole-net float32 check can see, caught by the stored-weights check (one float32 ulp)."""
    spec = NETS["repvgg"]
    state = state_of(spec)
    real = row_blocks._fuse_block
    monkeypatch.setattr(
        row_blocks, "_fuse_block", lambda block, dtype: tuple(t * (1 + 1e-6) for t in real(block, dtype))
    )
    with pytest.raises(
        EquivalenceError, match=r"stored float32 weights of stages\.\d\.\d: .* 1\.0\d+e-06 > 1\.19e-07"
    ) as info:
        convert(spec, state, device="cpu")
    report = info.value.report
    assert report.fp32.passed and all(r.passed for r in report.fp64)  # only the weights check sees it
