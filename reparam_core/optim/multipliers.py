"""Gradient multipliers as optimizer state: kept per parameter in ``optimizer.state[p]``, so they
travel with ``state_dict()`` / ``load_state_dict()``, ``deepcopy`` and re-wrapping of the model
(the official RepOptimizer keys them by Parameter objects in a side dict, where all three lose them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SpecError

KEY = "grad_multiplier"


class MultiplierState:
    """Mixin for ``torch.optim.Optimizer`` subclasses: ``multiplier(p)``, registration, and the
    gradient clipping that the structural form would see."""

    state: Any
    param_groups: list[dict[str, Any]]

    def _register_multipliers(self, multipliers: Mapping[nn.Parameter, Tensor] | None) -> None:
        if not multipliers:
            return
        params = {id(p) for group in self.param_groups for p in group["params"]}
        for param, mult in multipliers.items():
            if id(param) not in params:
                raise SpecError("grad_multipliers names a parameter the optimizer does not update")
            try:
                torch.broadcast_shapes(mult.shape, param.shape)
            except RuntimeError:
                raise SpecError(
                    f"a multiplier of shape {tuple(mult.shape)} does not broadcast to its parameter "
                    f"{tuple(param.shape)}"
                ) from None
            if torch.broadcast_shapes(mult.shape, param.shape) != param.shape:
                raise SpecError(
                    f"a multiplier of shape {tuple(mult.shape)} would grow its parameter {tuple(param.shape)}"
                )
            self.state[param][KEY] = mult.detach().to(device=param.device, dtype=param.dtype).clone()

    @staticmethod
    def _evaluate(closure: Callable[[], float] | None) -> float | None:
        """The loss of ``step(closure)``: the closure runs with gradients enabled, as torch's do."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def multiplier(self, param: Tensor) -> Tensor | None:
        found: Tensor | None = self.state[param].get(KEY) if param in self.state else None
        return found

    def _params_with_grads(self) -> Iterable[Tensor]:
        return (p for group in self.param_groups for p in group["params"] if p.grad is not None)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> Tensor:
        """Clip the gradients as ``torch.nn.utils.clip_grad_norm_`` would clip the *structural*
        (CSLA) net's gradients, so that training stays equivalent: each CSLA parameter's gradient
        is the fused gradient scaled by its branch scale, so the structural 2-norm is
        ``sqrt(sum(M * g^2))`` with the SGD multipliers ``M``. Only ``norm_type=2`` has that form.
        Clipping with torch's own function instead breaks the equivalence."""
        if norm_type != 2.0:
            raise SpecError("clip_grad_norm_: only the 2-norm of the structural gradients is exact")
        if getattr(self, "multiplier_power", 2) != 2:
            raise SpecError(
                "clip_grad_norm_: the structural gradient norm needs the SGD (power 2) multipliers; "
                "Adam-type training with clipping is not equivalent to the structural form"
            )
        total = torch.zeros((), dtype=torch.float64)
        for param in self._params_with_grads():
            assert param.grad is not None
            grad = param.grad.double()
            mult = self.multiplier(param)
            squares = grad * grad if mult is None else mult.double() * grad * grad
            total = total + squares.sum().cpu()
        norm = total.sqrt()
        factor = max_norm / (float(norm) + 1e-6)
        if factor < 1.0:
            for param in self._params_with_grads():
                assert param.grad is not None
                param.grad = param.grad * factor  # a new tensor: the caller's gradient is not mutated
        return norm
