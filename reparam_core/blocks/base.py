"""The contract every re-parameterizable block family implements.

A block holds only its training form. ``linear_forward`` is the sum of its linear branches;
``equivalent_kernel_bias`` returns the single conv kernel and bias that reproduce it exactly (and
is differentiable, so optimizers such as RepOpt's can use it). SE and the activation are applied
after, in both forms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypedDict, cast, get_args

import torch
from torch import Tensor, nn

from ..deploy.net import FusedConv
from ..deploy.spec import ConvLayerSpec, PaddingMode
from ..errors import ConversionError, SpecError
from ..fusion.transforms import KernelBias
from ..layers import SESpec, SqueezeExcite, apply_epilogue, make_activation
from ..registry import Registry

PADDING_MODES: tuple[str, ...] = get_args(PaddingMode)
ALL_ROWS = slice(None)


class ConvOptions(TypedDict, total=False):
    """The conv options every family takes (keyword arguments after the family's own)."""

    stride: int
    dilation: int
    groups: int
    padding_mode: str
    activation: str
    se: SESpec | None


class ReparamBlock(nn.Module, ABC):
    """Base of all block families. Subclasses set ``family`` and the options they can fuse exactly."""

    family: ClassVar[str]
    kernel_sizes: ClassVar[tuple[int, ...]] = (1, 3, 5, 7)
    supports_dilation: ClassVar[bool] = True
    # Row-separable: output channel o of the fused kernel depends only on row o of each branch's
    # kernel and on per-channel factors (fusion scales kernels per channel and adds them). Such
    # families implement ``kernel_bias_rows``; fp32 kernels with fp64 factors then fuse to fp64
    # accuracy without upcasting the kernels, a block of rows at a time.
    row_separable: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        activation: str = "relu",
        se: SESpec | None = None,
    ) -> None:
        super().__init__()
        self._check_options(in_channels, out_channels, kernel_size, stride, dilation, groups, padding_mode)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.padding_mode = cast(PaddingMode, padding_mode)  # validated above
        self.padding = dilation * (kernel_size - 1) // 2
        self.activation = activation
        self.se_spec = se
        self.se = SqueezeExcite(out_channels, se.rd_channels, se.norm_eps) if se else None
        self.act = make_activation(activation)

    def _check_options(
        self, cin: int, cout: int, k: int, stride: int, dilation: int, groups: int, padding_mode: str
    ) -> None:
        name = self.family
        if min(cin, cout, k, stride, dilation, groups) < 1:
            raise SpecError(f"{name}: channels, kernel size, stride, dilation and groups must be positive")
        if k not in self.kernel_sizes:
            raise SpecError(f"{name}: kernel_size={k} not supported (supported: {list(self.kernel_sizes)})")
        if cin % groups or cout % groups:
            raise SpecError(f"{name}: groups={groups} must divide in_channels={cin} and out_channels={cout}")
        if dilation > 1 and not self.supports_dilation:
            raise SpecError(f"{name}: dilation={dilation} cannot be fused exactly by this family")
        if padding_mode not in PADDING_MODES:
            raise SpecError(f"{name}: padding_mode={padding_mode!r} unknown (one of {list(PADDING_MODES)})")
        reason = self.unsupported(k, groups)
        if reason:
            raise SpecError(f"{name}: {reason}")

    @classmethod
    def unsupported(cls, kernel_size: int, groups: int) -> str | None:
        """Why this family cannot take ``kernel_size`` with ``groups`` (``None``: it can)."""
        return None

    @property
    def has_identity(self) -> bool:
        """Whether an identity skip is possible: same channel count, stride 1."""
        return self.in_channels == self.out_channels and self.stride == 1

    @abstractmethod
    def linear_forward(self, x: Tensor) -> Tensor:
        """Sum of the linear branches (everything before SE and activation)."""

    def equivalent_kernel_bias(self) -> KernelBias:
        """Kernel ``[out, in/groups, k, k]`` and bias ``[out]`` of the single equivalent conv."""
        return self.kernel_bias_rows(ALL_ROWS)

    def kernel_bias_rows(self, rows: slice) -> KernelBias:
        """Output channels ``rows`` of :meth:`equivalent_kernel_bias` (row-separable families)."""
        raise NotImplementedError(f"{self.family} is not row-separable; use equivalent_kernel_bias()")

    def forward(self, x: Tensor) -> Tensor:
        placement = self.se_spec.placement if self.se_spec else "pre_act"
        return apply_epilogue(self.linear_forward(x), self.se, self.act, placement)

    def layer_spec(self) -> ConvLayerSpec:
        return ConvLayerSpec(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            activation=self.activation,
            se=self.se_spec,
        )

    def to_deploy(self) -> FusedConv:
        """A fresh :class:`FusedConv` (same dtype/device) computing what this block computes in eval."""
        if self.training:
            raise_training(type(self).__name__)
        with torch.no_grad():
            kernel, bias = self.equivalent_kernel_bias()
        with torch.device("meta"):  # no throw-away weight initialisation
            fused = FusedConv(self.layer_spec())
        state = {"conv.weight": kernel.detach(), "conv.bias": bias.detach()}
        if self.se is not None:
            state.update({f"se.{k}": v.detach().clone() for k, v in self.se.state_dict().items()})
        fused.load_state_dict(state, strict=True, assign=True)
        return fused.eval()


def raise_training(what: str) -> None:
    """Refuse to fuse a module in training mode (its BNs would use batch statistics)."""
    raise ConversionError(
        f"{what} is in training mode: BN would use batch statistics, so no fixed conv is equivalent; "
        "call model.eval() before re-parameterizing"
    )


BLOCKS: Registry[type[ReparamBlock]] = Registry("block family")


def register_block(cls: type[ReparamBlock]) -> type[ReparamBlock]:
    """Class decorator: register a family under its ``family`` name (duplicates are refused)."""
    BLOCKS.add(cls.family, cls)
    return cls
