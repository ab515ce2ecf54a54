"""The networks every conversion ends in, and the container they share with training nets.

:class:`StagedNet` is ``stem -> stages -> head``: training nets hold re-parameterizable blocks in
it, deploy nets hold :class:`FusedConv` layers (one conv with bias, then the block's SE and
activation). :class:`PlainNet` is the deploy net built from a :class:`DeploySpec` alone.
"""

from __future__ import annotations

from typing import Any, Protocol, cast, runtime_checkable

from torch import Tensor, nn

from ..errors import SpecError
from ..layers import ClassifierHead, SqueezeExcite, apply_epilogue, make_activation
from .spec import ConvLayerSpec, DeploySpec


@runtime_checkable
class HasLayerSpec(Protocol):
    """A module with a deploy layer form: fused convs and every re-parameterizable block."""

    def layer_spec(self) -> ConvLayerSpec: ...


class FusedConv(nn.Module):
    """A re-parameterized block: one conv with bias, then the block's SE and activation."""

    def __init__(self, spec: ConvLayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv2d(
            spec.in_channels,
            spec.out_channels,
            spec.kernel_size,
            stride=spec.stride,
            padding=spec.padding,
            dilation=spec.dilation,
            groups=spec.groups,
            bias=True,
            padding_mode=spec.padding_mode,
        )
        self.se = SqueezeExcite(spec.out_channels, spec.se.rd_channels, spec.se.norm_eps) if spec.se else None
        self.act = make_activation(spec.activation, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        placement = self.spec.se.placement if self.spec.se else "pre_act"
        return apply_epilogue(self.conv(x), self.se, self.act, placement)

    def layer_spec(self) -> ConvLayerSpec:
        return self.spec


class StagedNet(nn.Module):
    """``stem`` -> ``stages`` -> ``head``: the layout of every network this library builds.

    Training nets hold re-parameterizable blocks; after :func:`reparameterize` the same container
    holds :class:`FusedConv` layers, with state-dict keys equal to a :class:`PlainNet`'s.
    """

    def __init__(self, stem: nn.Module, stages: list[list[nn.Module]], head: ClassifierHead | None) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.head = head

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        return self.head(x) if self.head is not None else x

    def deploy_spec(self, meta: dict[str, Any] | None = None) -> DeploySpec:
        """Describe this net's deploy form (every layer must be fused or re-parameterizable)."""

        def spec_of(where: str, module: nn.Module) -> ConvLayerSpec:
            if not isinstance(module, HasLayerSpec):
                raise SpecError(f"{where}: {type(module).__name__} has no deploy layer form")
            return module.layer_spec()

        return DeploySpec(
            in_channels=spec_of("stem", self.stem).in_channels,
            stem=spec_of("stem", self.stem),
            stages=[
                [spec_of(f"stages.{s}.{i}", block) for i, block in enumerate(cast(nn.Sequential, stage))]
                for s, stage in enumerate(self.stages)
            ],
            head=self.head.spec if self.head is not None else None,
            meta=meta or {},
        )


class PlainNet(StagedNet):
    """The deploy network, built from a :class:`DeploySpec` alone."""

    def __init__(self, spec: DeploySpec) -> None:
        super().__init__(
            FusedConv(spec.stem),
            [[FusedConv(layer) for layer in stage] for stage in spec.stages],
            ClassifierHead(spec.head) if spec.head is not None else None,
        )
        self.spec = spec


def build_deploy_model(deploy_spec: DeploySpec | dict[str, Any] | str) -> PlainNet:
    """The plain deploy network; ``load_state_dict`` the fused ``model.safetensors`` into it."""
    spec = deploy_spec if isinstance(deploy_spec, DeploySpec) else DeploySpec.parse(deploy_spec)
    return PlainNet(spec)
