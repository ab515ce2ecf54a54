"""Gradient re-parameterization (RepOptimizer, Ding et al., ICLR 2023): train a plain RepOpt-VGG so
that it moves exactly as the CSLA multi-branch form would.

``scales`` (hyper-search scales: extraction, the initialisation rule, the gradient multipliers),
``sgd`` (:class:`RepOptimizerSGD`, exact), ``adamw`` (:class:`RepOptimizerAdamW`, exact up to
Adam's epsilon) and ``multipliers`` (multipliers kept as optimizer state; gradient clipping as the
structural form would clip).
"""

from .adamw import RepOptimizerAdamW
from .scales import (
    Scales,
    extract_scales,
    grad_multipliers,
    plain_init,
    plain_state_from_csla,
    save_scales,
    scales_of,
)
from .sgd import RepOptimizerSGD

__all__ = [
    "RepOptimizerAdamW",
    "RepOptimizerSGD",
    "Scales",
    "extract_scales",
    "grad_multipliers",
    "plain_init",
    "plain_state_from_csla",
    "save_scales",
    "scales_of",
]
