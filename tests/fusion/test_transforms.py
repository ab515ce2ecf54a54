"""Each transform in reparam_core.fusion.transforms against the torch ops it replaces, in float64."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reparam_core.fusion import transforms as kernels
from tests.helpers import randomize_


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_fold_bn_matches_conv_then_bn() -> None:
    conv = nn.Conv2d(6, 8, 3, padding=1, bias=True)
    bn = randomize_(nn.BatchNorm2d(8)).eval()
    k, b = kernels.fold_bn(
        conv.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, conv.bias
    )
    x = torch.randn(2, 6, 9, 11)
    assert rel_err(F.conv2d(x, k, b, padding=1), bn(conv(x))) < 1e-14


def test_fold_bn_without_affine() -> None:
    bn = randomize_(nn.BatchNorm2d(4, affine=False)).eval()
    weight = torch.randn(4, 4, 1, 1)
    k, b = kernels.fold_bn(weight, bn.running_mean, bn.running_var, None, None, bn.eps)
    x = torch.randn(1, 4, 5, 5)
    assert rel_err(F.conv2d(x, k, b), bn(F.conv2d(x, weight))) < 1e-14


@pytest.mark.parametrize("small", [(1, 1), (1, 3), (3, 1), (3, 3)])
def test_pad_to_aligns_smaller_kernels(small: tuple[int, int]) -> None:
    k = torch.randn(4, 3, *small)
    pad = (1 - (3 - small[0]) // 2, 1 - (3 - small[1]) // 2)
    x = torch.randn(1, 3, 7, 8)
    big = kernels.pad_to(k, (3, 3))
    assert rel_err(F.conv2d(x, big, padding=1), F.conv2d(x, k, padding=pad)) < 1e-14


def test_pad_to_rejects_uncentrable_sizes() -> None:
    with pytest.raises(ValueError, match="cannot centre"):
        kernels.pad_to(torch.zeros(1, 1, 2, 2), (3, 3))


@pytest.mark.parametrize(("channels", "groups"), [(6, 1), (6, 2), (6, 3), (6, 6)])
def test_identity_kernel_is_identity_for_any_groups(channels: int, groups: int) -> None:
    x = torch.randn(2, channels, 5, 7)
    k = kernels.identity_kernel(channels, groups, 3, like=x)
    assert torch.equal(F.conv2d(x, k, padding=1, groups=groups), x)


@pytest.mark.parametrize(("k", "stride", "groups"), [(3, 1, 1), (3, 2, 2), (5, 1, 4), (7, 2, 1)])
def test_avg_pool_kernel_equals_avg_pool(k: int, stride: int, groups: int) -> None:
    x = torch.randn(2, 4, 11, 9)
    pool = kernels.avg_pool_kernel(4, groups, k, like=x)
    expected = F.avg_pool2d(x, k, stride, padding=k // 2, count_include_pad=True)
    got = F.conv2d(x, pool, stride=stride, padding=k // 2, groups=groups)
    assert rel_err(got, expected) < 1e-14


def test_avg_pool_kernel_has_no_fp32_constant() -> None:
    # An fp32 1/9 cast to fp64 differs from the fp64 1/9 by ~1e-9 relative: the known accuracy cap.
    k = kernels.avg_pool_kernel(2, 1, 3, like=torch.zeros(1, dtype=torch.float64))
    assert k.dtype == torch.float64
    assert k[0, 0, 0, 0].item() == 1.0 / 9.0


@settings(max_examples=30, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4]),
    ka=st.sampled_from([1, 3]),
    kb=st.sampled_from([1, 3, 5]),
    mid_mult=st.sampled_from([1, 2]),
)
def test_merge_sequential_matches_two_convs(groups: int, ka: int, kb: int, mid_mult: int) -> None:
    cin, mid, cout = 4, 4 * mid_mult, 8
    k1, b1 = torch.randn(mid, cin // groups, ka, ka), torch.randn(mid)
    k2, b2 = torch.randn(cout, mid // groups, kb, kb), torch.randn(cout)
    x = torch.randn(2, cin, 12, 10)
    seq = F.conv2d(F.conv2d(x, k1, b1, groups=groups), k2, b2, groups=groups)  # valid convs: no borders
    k, b = kernels.merge_sequential((k1, b1), (k2, b2), groups)
    assert k.shape == (cout, cin // groups, ka + kb - 1, ka + kb - 1)
    assert rel_err(F.conv2d(x, k, b, groups=groups), seq) < 1e-13


def test_merge_sequential_is_exact_at_borders_with_bias_padding() -> None:
    k1, b1 = torch.randn(6, 4, 1, 1), torch.randn(6)
    k2, b2 = torch.randn(5, 6, 3, 3), torch.randn(5)
    x = torch.randn(1, 4, 6, 7)
    mid = F.conv2d(x, k1, b1)
    padded = F.pad(mid - b1.reshape(1, -1, 1, 1), [1] * 4) + b1.reshape(1, -1, 1, 1)
    k, b = kernels.merge_sequential((k1, b1), (k2, b2), 1)
    assert rel_err(F.conv2d(x, k, b, padding=1), F.conv2d(padded, k2, b2)) < 1e-13
    # With a plain zero pad of the intermediate, the borders differ: the pad value matters.
    naive = F.conv2d(F.pad(mid, [1] * 4), k2, b2)
    assert rel_err(F.conv2d(x, k, b, padding=1), naive) > 1e-3


def test_merge_sequential_rejects_mismatched_widths() -> None:
    with pytest.raises(ValueError, match="input channels"):
        kernels.merge_sequential(
            (torch.zeros(4, 2, 1, 1), torch.zeros(4)), (torch.zeros(3, 3, 3, 3), torch.zeros(3)), 1
        )


def test_concat_depth_equals_concatenated_outputs() -> None:
    a = (torch.randn(3, 4, 3, 3), torch.randn(3))
    b = (torch.randn(5, 4, 3, 3), torch.randn(5))
    x = torch.randn(1, 4, 6, 6)
    k, bias = kernels.concat_depth(a, b)
    expected = torch.cat([F.conv2d(x, *a, padding=1), F.conv2d(x, *b, padding=1)], dim=1)
    assert rel_err(F.conv2d(x, k, bias, padding=1), expected) < 1e-14


def test_add_and_scale() -> None:
    a = (torch.randn(3, 2, 3, 3), torch.randn(3))
    b = (torch.randn(3, 2, 3, 3), torch.randn(3))
    s = torch.randn(3)
    x = torch.randn(1, 2, 5, 5)
    k, bias = kernels.add_branches(a, b)
    expected = (F.conv2d(x, *a) + F.conv2d(x, *b)) * s.reshape(1, -1, 1, 1)
    assert rel_err(F.conv2d(x, kernels.scale(k, s), bias * s), expected) < 1e-14
    with pytest.raises(ValueError, match="cannot add"):
        kernels.add_branches(a, (torch.zeros(3, 2, 1, 1), torch.zeros(3)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_transforms_preserve_dtype(dtype: torch.dtype) -> None:
    like = torch.zeros(1, dtype=dtype)
    k = torch.ones(4, 4, 1, 1, dtype=dtype)
    b = torch.ones(4, dtype=dtype)
    outs = [
        kernels.identity_kernel(4, 2, 3, like=like),
        kernels.avg_pool_kernel(4, 4, 3, like=like),
        kernels.pad_to(k, (3, 3)),
        *kernels.fold_bn(k, b, b, b, b, 1e-5),
        *kernels.merge_sequential((k, b), (k, b), 1),
    ]
    assert all(t.dtype == dtype for t in outs)


def test_merge_sequential_rectangular_kernels() -> None:
    k1, b1 = torch.randn(4, 3, 1, 3), torch.randn(4)
    k2, b2 = torch.randn(5, 4, 3, 1), torch.randn(5)
    x = torch.randn(1, 3, 9, 11)
    k, b = kernels.merge_sequential((k1, b1), (k2, b2), 1)
    assert k.shape == (5, 3, 3, 3)
    assert rel_err(F.conv2d(x, k, b), F.conv2d(F.conv2d(x, k1, b1), k2, b2)) < 1e-13


def test_dilate_equals_dilated_conv() -> None:
    k = torch.randn(4, 2, 3, 3)
    x = torch.randn(1, 2, 13, 12)
    dense = kernels.dilate(k, (2, 3))
    assert dense.shape == (4, 2, 5, 7)
    assert (
        rel_err(F.conv2d(x, dense, padding=(2, 3)), F.conv2d(x, k, padding=(2, 3), dilation=(2, 3))) < 1e-14
    )


@pytest.mark.parametrize("narrow", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_casts_a_narrower_kernel_once_with_the_promoted_result(narrow: torch.dtype) -> None:
    kernel = torch.randn(6, 4, 3, 3).to(narrow)
    factors = torch.rand(6) + 0.5
    before = kernel.clone()
    scaled = kernels.scale(kernel, factors)
    assert scaled.dtype == torch.float64
    assert torch.equal(scaled, kernel.double() * factors.reshape(-1, 1, 1, 1))  # bit for bit
    assert torch.equal(kernel, before)  # the input is never scaled in place


def test_fold_bn_of_a_float32_kernel_equals_the_float64_fold() -> None:
    kernel = torch.randn(5, 3, 3, 3).float()
    mean, var, gamma, beta = torch.randn(5), torch.rand(5) + 0.1, torch.randn(5), torch.randn(5)
    got = kernels.fold_bn(kernel, mean, var, gamma, beta, 1e-5)
    expected = kernels.fold_bn(kernel.double(), mean, var, gamma, beta, 1e-5)
    assert got[0].dtype == torch.float64
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_scale_of_a_narrower_kernel_stays_differentiable() -> None:
    kernel = torch.randn(4, 2, 3, 3).float().requires_grad_()
    factors = (torch.rand(4) + 0.5).requires_grad_()
    kernels.scale(kernel, factors).sum().backward()
    assert kernel.grad is not None and factors.grad is not None
    assert torch.allclose(factors.grad, kernel.detach().double().sum(dim=(1, 2, 3)))
    assert torch.equal(kernel.grad, factors.detach().float().reshape(-1, 1, 1, 1).expand(4, 2, 3, 3))
