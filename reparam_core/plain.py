"""The deploy network: a plain stack of conv (+SE) (+activation) layers and a head.

A :class:`DeploySpec` is JSON-serializable and fully describes the architecture (stride, padding,
dilation, groups and padding mode of every conv), so :class:`PlainNet` can be built from it alone
and ``load_state_dict`` the fused weights without the training model or its code.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor, nn

from .errors import SpecError, describe_validation_error
from .layers import ClassifierHead, HeadSpec, SESpec, SqueezeExcite, apply_epilogue, make_activation

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
DEPLOY_FORMAT_VERSION = 1


class ConvLayerSpec(BaseModel):
    """One fused layer: ``Conv2d(bias=True)``, then SE and activation in the stated order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(gt=0)
    out_channels: int = Field(gt=0)
    kernel_size: int = Field(gt=0)
    stride: int = Field(default=1, gt=0)
    padding: int = Field(default=0, ge=0)
    dilation: int = Field(default=1, gt=0)
    groups: int = Field(default=1, gt=0)
    padding_mode: PaddingMode = "zeros"
    activation: str = "relu"
    se: SESpec | None = None

    @model_validator(mode="after")
    def _check_groups(self) -> ConvLayerSpec:
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise SpecError(
                f"groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )
        return self


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
        self.se = SqueezeExcite(spec.out_channels, spec.se.rd_channels) if spec.se else None
        self.act = make_activation(spec.activation, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        placement = self.spec.se.placement if self.spec.se else "pre_act"
        return apply_epilogue(self.conv(x), self.se, self.act, placement)

    def layer_spec(self) -> ConvLayerSpec:
        return self.spec


class DeploySpec(BaseModel):
    """Architecture of a plain deploy net; ``meta`` carries what serving needs (input size, labels...)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = DEPLOY_FORMAT_VERSION
    in_channels: int = Field(gt=0)
    stem: ConvLayerSpec
    stages: list[list[ConvLayerSpec]]
    head: HeadSpec | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_chain(self) -> DeploySpec:
        if self.format_version != DEPLOY_FORMAT_VERSION:
            raise SpecError(f"deploy spec format_version {self.format_version} is not supported")
        channels = self.in_channels
        for where, layer in self.layers():
            if layer.in_channels != channels:
                raise SpecError(f"{where}: expects {layer.in_channels} input channels, gets {channels}")
            channels = layer.out_channels
        if self.head is not None and self.head.in_features != channels:
            raise SpecError(f"head: expects {self.head.in_features} features, gets {channels}")
        return self

    @classmethod
    def parse(cls, data: str | bytes | dict[str, Any]) -> DeploySpec:
        """Validate JSON text or a dict; every problem is reported in one :class:`SpecError`."""
        try:
            if isinstance(data, dict):
                return cls.model_validate(data)
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise SpecError(describe_validation_error(exc, "deploy spec")) from None

    def preprocess(self) -> dict[str, Any]:
        """The training spec's image preprocessing (resize, crop, mean, std); empty when unknown."""
        return dict(self.meta.get("arch_spec", {}).get("preprocess") or {})

    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input: the training spec's input size (224x224 when it has none)."""
        h, w = self.meta.get("arch_spec", {}).get("input_size", (224, 224))
        return self.in_channels, int(h), int(w)

    def layers(self) -> list[tuple[str, ConvLayerSpec]]:
        named = [("stem", self.stem)]
        for s, stage in enumerate(self.stages):
            named += [(f"stages.{s}.{i}", layer) for i, layer in enumerate(stage)]
        return named


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
            layer_spec = getattr(module, "layer_spec", None)
            if layer_spec is None:
                raise SpecError(f"{where}: {type(module).__name__} has no deploy layer form")
            return layer_spec()  # type: ignore[no-any-return]

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
