"""``RepOptimizerAdamW``: AdamW on the plain net, with each parameter's *normalised update*
multiplied by its multiplier (power 1: ``|s| + |t| at the centre + 1 on the identity diagonal``).

Why power 1 and on the update: a CSLA parameter whose gradient is ``a * g`` (``a`` its branch
scale) gets Adam moments ``a * m`` and ``a^2 * v``, so its update is ``a m / (|a| sqrt(v) + eps)``
and adds ``a`` times that to the fused kernel: ``|a| m / (sqrt(v) + eps / |a|)``. Summed over the
branches covering a tap this is ``M m / (sqrt(v) + eps)`` exactly when ``eps`` is negligible
against ``sqrt(v)``; with ``eps`` it is approximate (each branch would divide by its own
``eps / |a|``). Decoupled weight decay is linear and exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SpecError
from .multipliers import MultiplierState


class RepOptimizerAdamW(MultiplierState, torch.optim.Optimizer):
    """AdamW (decoupled weight decay; param groups, ``maximize``, ``foreach``, any device) plus
    ``grad_multipliers``: a mapping from parameters to tensors broadcastable to them."""

    multiplier_power = 1

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        grad_multipliers: Mapping[nn.Parameter, Tensor] | None = None,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise SpecError(
                f"AdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}"
            )
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults)
        self._register_multipliers(grad_multipliers)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = self._evaluate(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for param in params:
                if param.grad is not None and param.grad.is_sparse:
                    raise SpecError("RepOptimizerAdamW does not take sparse gradients")
                state = self.state[param]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
            use_foreach = group["foreach"] if group["foreach"] is not None else params[0].is_cuda
            (_foreach_update if use_foreach else _single_update)(self, group, params)
        return loss


def _hyper(group: dict[str, Any], step: float) -> tuple[float, float, float, float, float]:
    beta1, beta2 = group["betas"]
    step_size = group["lr"] / (1 - beta1**step)
    return beta1, beta2, step_size, math.sqrt(1 - beta2**step), group["lr"] * group["weight_decay"]


def _grad(param: Tensor, maximize: bool) -> Tensor:
    assert param.grad is not None
    return -param.grad if maximize else param.grad


def _single_update(opt: RepOptimizerAdamW, group: dict[str, Any], params: list[Tensor]) -> None:
    for param in params:
        state = opt.state[param]
        beta1, beta2, step_size, bc2_sqrt, decay = _hyper(group, float(state["step"]))
        grad = _grad(param, group["maximize"])
        param.mul_(1 - decay)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        update = state["exp_avg"] / (state["exp_avg_sq"].sqrt() / bc2_sqrt + group["eps"])
        mult = opt.multiplier(param)
        param.add_(update if mult is None else update * mult, alpha=-step_size)


def _foreach_update(opt: RepOptimizerAdamW, group: dict[str, Any], params: list[Tensor]) -> None:
    """The same update with torch's multi-tensor ops (bias corrections per parameter: a parameter
    without a gradient at some step has taken fewer steps than the others)."""
    hyper = [_hyper(group, float(opt.state[p]["step"])) for p in params]
    beta1, beta2, _, _, decay = hyper[0]
    grads = [_grad(p, group["maximize"]) for p in params]
    avgs = [opt.state[p]["exp_avg"] for p in params]
    squares = [opt.state[p]["exp_avg_sq"] for p in params]
    torch._foreach_mul_(params, 1 - decay)
    torch._foreach_lerp_(avgs, grads, 1 - beta1)
    torch._foreach_mul_(squares, beta2)
    torch._foreach_addcmul_(squares, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(squares)
    torch._foreach_div_(denoms, [h[3] for h in hyper])
    torch._foreach_add_(denoms, group["eps"])
    updates = list(torch._foreach_div(avgs, denoms))
    for i, param in enumerate(params):
        mult = opt.multiplier(param)
        if mult is not None:
            updates[i] = updates[i] * mult
    torch._foreach_mul_(updates, [-h[2] for h in hyper])
    torch._foreach_add_(params, updates)
