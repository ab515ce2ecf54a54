"""The deploy spec: a JSON-serializable description of a plain deploy net.

:class:`DeploySpec` states stride, padding, dilation, groups and padding mode of every fused conv,
so a deploy net can be rebuilt from it alone and ``load_state_dict`` the fused weights without the
training model or its code. ``meta`` carries what serving needs (the training spec: input size,
preprocessing, labels).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import SpecError, describe_validation_error
from ..layers import HeadSpec, SESpec

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
