"""Row-block fusion (the conversion fast path) equals whole-block fusion through the modules."""

from __future__ import annotations

import pytest
import torch

from reparam_core import BLOCKS, reparameterize
from reparam_core.arch import build_train_model
from reparam_core.fusion.row_blocks import fused_state_dict
from reparam_core.layers import SESpec
from tests.helpers import randomize_

SEPARABLE = [name for name in BLOCKS.names() if BLOCKS.get(name).row_separable]


@pytest.mark.parametrize("family", SEPARABLE)
@pytest.mark.parametrize("groups", [1, 3, 12])
def test_rows_in_any_blocks_concatenate_to_the_whole_kernel(family: str, groups: int) -> None:
    block = randomize_(BLOCKS.get(family)(12, 12, 3, groups=groups).double()).eval()
    kernel, bias = block.equivalent_kernel_bias()
    parts = [block.kernel_bias_rows(slice(a, b)) for a, b in [(0, 5), (5, 7), (7, 12)]]  # unaligned to groups
    assert torch.equal(torch.cat([k for k, _ in parts]), kernel)
    assert torch.equal(torch.cat([b for _, b in parts]), bias)


def test_non_separable_families_say_so() -> None:
    block = BLOCKS.get("dbb")(4, 4)
    assert not block.row_separable
    with pytest.raises(NotImplementedError, match="dbb is not row-separable"):
        block.kernel_bias_rows(slice(0, 2))


@pytest.mark.parametrize("block", ["repvgg", "dbb", "mobileone", "csla"])
def test_fused_state_dict_matches_reparameterize(block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("reparam_core.fusion.row_blocks.CHUNK_BYTES", 2048)  # force many row blocks
    spec = {
        "family": "repvgg",
        "block": block,
        "stem": {"width": 16},
        "stages": [{"depth": 2, "width": 24, "groups": [1, 3], "se": {"reduction": 4}}],
        "num_classes": 3,
    }
    model = randomize_(build_train_model(spec).double()).eval()
    expected = {k: v.float() for k, v in reparameterize(model).state_dict().items()}
    got = fused_state_dict(model, torch.float32)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_mixed_precision_inputs_fuse_in_float64() -> None:
    # fp32 kernels with fp64 per-channel factors (the loader's layout) give exactly the fp64 result.
    block = randomize_(BLOCKS.get("repvgg")(8, 8, se=SESpec(rd_channels=2)).double()).eval()
    kernels = [p for p in block.parameters() if p.ndim == 4]
    for param in kernels:
        param.data = param.data.float().double()  # values exactly representable in fp32
    exact = block.equivalent_kernel_bias()
    for param in kernels:
        param.data = param.data.float()
    mixed = block.kernel_bias_rows(slice(None))
    assert mixed[0].dtype == torch.float64
    assert torch.equal(mixed[0], exact[0]) and torch.equal(mixed[1], exact[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fusion_on_cuda_stays_there_and_equals_the_cpu_result() -> None:
    spec = {
        "family": "repvgg",
        "stem": {"width": 16},
        "stages": [{"depth": 2, "width": 24, "groups": [1, 3]}],
        "num_classes": 3,
    }
    model = randomize_(build_train_model(spec)).eval()
    layout = {
        k: v.double() if v.is_floating_point() and v.ndim != 4 else v for k, v in model.state_dict().items()
    }
    model.load_state_dict(layout, assign=True)  # the loader's layout: fp32 kernels, fp64 statistics
    on_cpu = fused_state_dict(model, torch.float32)
    on_gpu = fused_state_dict(model.to("cuda"), torch.float32)
    assert all(v.device.type == "cuda" for v in on_gpu.values())
    assert on_cpu.keys() == on_gpu.keys()
    assert all(torch.equal(on_cpu[k], on_gpu[k].cpu()) for k in on_cpu)
