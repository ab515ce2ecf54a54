"""Non-fusable layers that blocks and deploy nets share: activations and squeeze-excitation."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .registry import Registry

ACTIVATIONS: Registry[Callable[..., nn.Module]] = Registry("activation")
ACTIVATIONS.add("relu", nn.ReLU)
ACTIVATIONS.add("relu6", nn.ReLU6)
ACTIVATIONS.add("silu", nn.SiLU)
ACTIVATIONS.add("gelu", nn.GELU)
ACTIVATIONS.add("hardswish", nn.Hardswish)
ACTIVATIONS.add("leaky_relu", nn.LeakyReLU)
ACTIVATIONS.add("identity", nn.Identity)


def make_activation(name: str, inplace: bool = False) -> nn.Module:
    """Build a registered activation by name (``UnknownNameError`` lists the known ones).

    ``inplace`` where the activation supports it: the deploy net applies it to a fresh conv
    output, which saves an allocation per layer (timm's deploy nets do the same).
    """
    factory = ACTIVATIONS.get(name)
    if inplace and "inplace" in inspect.signature(factory).parameters:
        return factory(inplace=True)
    return factory()


SEPlacement = Literal["pre_act", "post_act"]


class SESpec(BaseModel):
    """Squeeze-excitation settings. ``placement`` says whether SE runs before or after the activation;
    ``norm_eps`` adds a BatchNorm (that epsilon) after the gate: QARepVGG's post-sum BN, which the SE
    in front of it keeps from folding into the conv."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rd_channels: int = Field(gt=0, description="channels of the bottleneck")
    placement: SEPlacement = "pre_act"
    norm_eps: float | None = Field(default=None, gt=0, description="BatchNorm after the gate, its eps")


class SqueezeExcite(nn.Module):
    """Global-average squeeze, 1x1 reduce, ReLU, 1x1 expand, sigmoid gate (then ``bn`` with
    ``norm_eps``: a BN after the gate, which no conv can absorb).

    The squeeze averages over both spatial axes of whatever size comes in; pooling with
    ``kernel_size = width`` (as some public code does) breaks on non-square inputs.
    """

    def __init__(self, channels: int, rd_channels: int, norm_eps: float | None = None) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.bn = nn.BatchNorm2d(channels, eps=norm_eps) if norm_eps is not None else None

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        out = x * torch.sigmoid(self.expand(self.act(self.reduce(s))))
        return self.bn(out) if self.bn is not None else out


def apply_epilogue(x: Tensor, se: nn.Module | None, act: nn.Module, placement: str) -> Tensor:
    """The non-linear tail shared by training blocks and fused convs: SE before or after the activation."""
    if se is not None and placement == "pre_act":
        x = se(x)
    x = act(x)
    if se is not None and placement == "post_act":
        x = se(x)
    return x


class HeadSpec(BaseModel):
    """Classifier head: global average pool, optional dropout, linear layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_features: int = Field(gt=0)
    num_classes: int = Field(gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class ClassifierHead(nn.Module):
    """Global average pool over any spatial size, then ``fc``."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__()
        self.spec = spec
        self.drop = nn.Dropout(spec.dropout)
        self.fc = nn.Linear(spec.in_features, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(x.mean(dim=(2, 3))))
