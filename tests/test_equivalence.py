from __future__ import annotations

import pytest
import torch

from reparam_core import check_equivalence, reparameterize
from reparam_core.blocks import RepVGGBlock
from reparam_core.equivalence import tf32_disabled
from tests.helpers import randomize_


def test_detects_a_wrong_fusion() -> None:
    block = randomize_(RepVGGBlock(8, 8).double()).eval()
    fused = reparameterize(block)
    with torch.no_grad():
        fused.conv.bias[0] += 1e-6
    report = check_equivalence(block, fused, (2, 8, 10, 12), device="cpu", tolerance=1e-9)
    assert not report.passed and report.max_rel_error > 1e-9


def test_non_finite_output_fails() -> None:
    block = randomize_(RepVGGBlock(8, 8).double()).eval()
    fused = reparameterize(block)
    with torch.no_grad():
        fused.conv.weight[0, 0, 0, 0] = float("nan")
    report = check_equivalence(block, fused, (1, 8, 6, 6), device="cpu")
    assert not report.passed and report.max_rel_error == float("inf")


def test_report_fields() -> None:
    block = randomize_(RepVGGBlock(4, 4).double()).eval()
    report = check_equivalence(block, reparameterize(block), (1, 4, 5, 7), device="cpu")
    assert report.dtype == "float64" and report.device == "cpu" and report.input_shape == [1, 4, 5, 7]
    assert report.top1_agreement is None  # feature-map outputs have no classes


def test_tf32_flags_restored() -> None:
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with tf32_disabled():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_equivalence_on_cuda_with_tf32_off() -> None:
    block = randomize_(RepVGGBlock(32, 32, groups=2).double()).eval()
    fused = reparameterize(block)
    report = check_equivalence(
        block, fused, (4, 32, 31, 17), dtype=torch.float32, device="cuda", tolerance=1e-5
    )
    assert report.device.startswith("cuda") and report.passed, report
