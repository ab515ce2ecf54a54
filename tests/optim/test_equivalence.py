"""Training the plain net with a RepOptimizer = training the CSLA structural form, step for step.

The CSLA net (constant kxk / 1x1 scales, trainable identity scale, BN after the sum) is trained with
torch's own optimizer; the plain net, initialised by the paper's rule, with ours. After every step
the CSLA net's fused pre-BN kernels must equal the plain net's conv weights (float64)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from reparam_core import build_train_model
from reparam_core.blocks import LinearAddBlock
from reparam_core.example import randomize_statistics
from reparam_core.optim import (
    RepOptimizerAdamW,
    RepOptimizerSGD,
    grad_multipliers,
    plain_state_from_csla,
    scales_of,
)

ARCH = {
    "family": "repopt_vgg",
    "stem": {"width": 8},
    "stages": [{"depth": 3, "width": 16, "groups": [1, 2, 4]}, {"depth": 2, "width": 16, "stride": 2}],
    "num_classes": 5,
    "input_size": [12, 10],
}
CSLA = {**ARCH, "block": "csla"}
PLAIN = {**ARCH, "block": "conv_bn"}


def nets() -> tuple[nn.Module, nn.Module]:
    csla = build_train_model(CSLA).double()
    randomize_statistics(csla, seed=3)  # scales away from 1, realistic BN statistics
    plain = build_train_model(PLAIN).double()
    plain.load_state_dict(plain_state_from_csla(csla))
    return csla, plain


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(6, 3, 12, 10, generator=gen, dtype=torch.float64),
            torch.randint(0, 5, (6,), generator=gen),
        )
        for _ in range(count)
    ]


def worst_kernel_error(csla: nn.Module, plain: nn.Module) -> float:
    plain_state = plain.state_dict()
    worst = 0.0
    for name, block in csla.named_modules():
        if isinstance(block, LinearAddBlock):
            fused, ours = block.linear_kernel().detach(), plain_state[f"{name}.conv.weight"]
            worst = max(worst, ((fused - ours).abs().max() / fused.abs().max()).item())
    head = (csla.head.fc.weight - plain.head.fc.weight).abs().max() / csla.head.fc.weight.abs().max()
    return max(worst, head.item())


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, data: list, clip: Callable | None = None
) -> None:
    model.train()
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if clip is not None:
            clip()
        optimizer.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_sgd_momentum_nesterov_weight_decay_is_exact(foreach: bool) -> None:
    csla, plain = nets()
    options = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "foreach": foreach}
    structural = torch.optim.SGD(csla.parameters(), **options)
    ours = RepOptimizerSGD(
        plain.parameters(), **options, grad_multipliers=grad_multipliers(plain, scales_of(csla))
    )
    data = batches(32)
    train(csla, structural, data)
    train(plain, ours, data)
    assert worst_kernel_error(csla, plain) <= 1e-10
    assert worst_kernel_error(nets()[0], plain) > 1e-3  # and training did move the weights


def test_sgd_dampening_and_param_groups() -> None:
    csla, plain = nets()
    c_convs = [
        p
        for n, p in csla.named_parameters()
        if n.endswith(("conv.weight", "conv_1x1.weight", "scale_identity.weight"))
    ]
    c_rest = [p for p in csla.parameters() if all(p is not q for q in c_convs)]
    p_convs = [p for n, p in plain.named_parameters() if n.endswith("conv.weight")]
    p_rest = [p for p in plain.parameters() if all(p is not q for q in p_convs)]
    groups = lambda convs, rest: [{"params": convs, "weight_decay": 1e-3}, {"params": rest, "lr": 0.01}]  # noqa: E731
    options = {"lr": 0.05, "momentum": 0.8, "dampening": 0.1}
    structural = torch.optim.SGD(groups(c_convs, c_rest), **options)
    ours = RepOptimizerSGD(
        groups(p_convs, p_rest), **options, grad_multipliers=grad_multipliers(plain, scales_of(csla))
    )
    data = batches(30)
    train(csla, structural, data)
    train(plain, ours, data)
    assert worst_kernel_error(csla, plain) <= 1e-10


def test_gradient_clipping_the_structural_way_stays_exact() -> None:
    csla, plain = nets()
    structural = torch.optim.SGD(csla.parameters(), lr=0.05, momentum=0.9)
    ours = RepOptimizerSGD(
        plain.parameters(), lr=0.05, momentum=0.9, grad_multipliers=grad_multipliers(plain, scales_of(csla))
    )
    data = batches(30)
    max_norm = 0.05  # small enough to clip at every step
    norms: list[float] = []
    train(
        csla,
        structural,
        data,
        clip=lambda: norms.append(float(nn.utils.clip_grad_norm_(csla.parameters(), max_norm))),
    )
    train(plain, ours, data, clip=lambda: ours.clip_grad_norm_(max_norm))
    assert min(norms) > max_norm and worst_kernel_error(csla, plain) <= 1e-10


def test_torch_clipping_on_the_plain_net_is_not_equivalent() -> None:
    """Why ``clip_grad_norm_`` exists: clipping the plain gradients clips at another norm."""
    csla, plain = nets()
    structural = torch.optim.SGD(csla.parameters(), lr=0.05)
    ours = RepOptimizerSGD(
        plain.parameters(), lr=0.05, grad_multipliers=grad_multipliers(plain, scales_of(csla))
    )
    data = batches(5)
    train(csla, structural, data, clip=lambda: nn.utils.clip_grad_norm_(csla.parameters(), 0.05))
    train(plain, ours, data, clip=lambda: nn.utils.clip_grad_norm_(plain.parameters(), 0.05))
    assert worst_kernel_error(csla, plain) > 1e-6


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_is_exact_where_epsilon_is_negligible(foreach: bool) -> None:
    csla, plain = nets()
    options = {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.05}
    structural = torch.optim.AdamW(csla.parameters(), eps=1e-30, **options)
    ours = RepOptimizerAdamW(
        plain.parameters(), eps=1e-30, foreach=foreach, **options,
        grad_multipliers=grad_multipliers(plain, scales_of(csla), power=1),
    )  # fmt: skip
    data = batches(30)
    train(csla, structural, data)
    train(plain, ours, data)
    assert worst_kernel_error(csla, plain) <= 1e-10


def test_adamw_with_default_epsilon_deviates_by_a_bounded_amount() -> None:
    """Measured, and documented in docs/optim.md: with eps=1e-8 each branch would divide by its own
    eps / |scale|; the fused kernels then differ from the structural ones by far less than an
    update, growing slowly with the number of steps."""
    csla, plain = nets()
    structural = torch.optim.AdamW(csla.parameters(), lr=1e-3)
    ours = RepOptimizerAdamW(
        plain.parameters(), lr=1e-3, grad_multipliers=grad_multipliers(plain, scales_of(csla), power=1)
    )
    data = batches(30)
    train(csla, structural, data)
    train(plain, ours, data)
    assert 0 < worst_kernel_error(csla, plain) <= 1e-5


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_resuming_from_state_dicts_continues_the_same_trajectory(kind: str, tmp_path) -> None:
    _, plain = nets()
    scales = scales_of(nets()[0])
    make = {
        "sgd": lambda m, mults: RepOptimizerSGD(
            m.parameters(), lr=0.05, momentum=0.9, nesterov=True, grad_multipliers=mults
        ),
        "adamw": lambda m, mults: RepOptimizerAdamW(m.parameters(), lr=1e-3, grad_multipliers=mults),
    }[kind]
    power = 2 if kind == "sgd" else 1
    optimizer = make(plain, grad_multipliers(plain, scales, power))
    data = batches(20)
    train(plain, optimizer, data[:10])
    torch.save({"model": plain.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "mid.pth")
    straight = copy.deepcopy(plain)
    straight_opt = make(straight, None)
    straight_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # a deepcopy loses nothing
    train(plain, optimizer, data[10:])
    saved = torch.load(tmp_path / "mid.pth", weights_only=True)
    resumed = build_train_model(PLAIN).double()
    resumed.load_state_dict(saved["model"])
    resumed_opt = make(resumed, None)  # no multipliers given: they come back with the state
    resumed_opt.load_state_dict(saved["optimizer"])
    train(resumed, resumed_opt, data[10:])
    train(straight, straight_opt, data[10:])
    for other in (resumed, straight):
        assert all(
            torch.equal(a, b)
            for a, b in zip(plain.state_dict().values(), other.state_dict().values(), strict=True)
        )


def test_gradients_are_not_mutated() -> None:
    _, plain = nets()
    optimizer = RepOptimizerSGD(
        plain.parameters(), lr=0.1, grad_multipliers=grad_multipliers(plain, scales_of(nets()[0]))
    )
    x, y = batches(1)[0]
    nn.functional.cross_entropy(plain.train()(x), y).backward()
    before = {id(p): p.grad.clone() for p in plain.parameters()}
    optimizer.step()
    assert all(torch.equal(p.grad, before[id(p)]) for p in plain.parameters())


@pytest.mark.parametrize("kind", [RepOptimizerSGD, RepOptimizerAdamW])
def test_step_with_a_closure_returns_its_loss(kind: type) -> None:
    _, plain = nets()
    optimizer = kind(plain.parameters(), lr=1e-3)
    x, y = batches(1)[0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(plain.train()(x), y)
        loss.backward()
        return loss

    before = plain.head.fc.weight.detach().clone()
    loss = optimizer.step(closure)
    assert loss is not None and loss.item() > 0 and not torch.equal(before, plain.head.fc.weight)


def test_adamw_foreach_equals_single_tensor_when_parameters_skip_steps() -> None:
    """A parameter without a gradient at some steps has its own step count (bias correction)."""
    results = []
    for foreach in (False, True):
        _, plain = nets()
        optimizer = RepOptimizerAdamW(plain.parameters(), lr=1e-3, foreach=foreach)
        for i, (x, y) in enumerate(batches(6)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(plain.train()(x), y).backward()
            if i < 3:
                plain.head.fc.weight.grad = None  # the head skips the first three steps
            optimizer.step()
        results.append(plain.state_dict())
    single, multi = results
    assert all(torch.allclose(single[k], multi[k], rtol=1e-12, atol=1e-15) for k in single)
