"""``RepOptimizerSGD``: torch's SGD on the plain net, with each gradient multiplied by its
parameter's multiplier first (a new tensor: ``p.grad`` itself is never changed).

SGD is linear in the gradient, and weight decay, momentum, dampening and Nesterov are linear in the
parameters, so training a plain conv ``W = s*W3 + t*pad(W1) + u*I`` with the gradient
``M * dL/dW`` (``M = s^2 + t^2 at the centre + 1 on the identity diagonal``) moves it exactly as
training the CSLA branches moves their sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .multipliers import MultiplierState


class RepOptimizerSGD(MultiplierState, torch.optim.SGD):
    """``torch.optim.SGD`` (every option, param groups, foreach, any device) plus ``grad_multipliers``:
    a mapping from parameters to tensors broadcastable to them (see ``scales.grad_multipliers``)."""

    multiplier_power = 2

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        grad_multipliers: Mapping[nn.Parameter, Tensor] | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
        )
        self._register_multipliers(grad_multipliers)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = self._evaluate(closure)
        originals: list[tuple[Tensor, Tensor]] = []
        for param in self._params_with_grads():
            mult = self.multiplier(param)
            if mult is not None and param.grad is not None:
                originals.append((param, param.grad))
                param.grad = param.grad * mult
        try:
            super().step()
        finally:
            for param, grad in originals:
                param.grad = grad
        return loss
