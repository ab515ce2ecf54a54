"""ArchSpec: what network a checkpoint belongs to, as JSON or YAML.

Minimal form: ``{"family": "repvgg", "variant": "B1g4", "num_classes": 1000}``. RepVGG-style nets
can swap their block (``"block": "acb" | "dbb" | "orepa" | "csla" | ...``). Instead of a
``variant``, ``stem`` + ``stages`` describe a custom net explicitly. Stride, padding mode,
dilation, BN eps, activation and SE placement cannot be read from a checkpoint's shapes: they
come from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import presets
from .blocks import BLOCKS
from .errors import SpecError, describe_validation_error
from .layers import ACTIVATIONS
from .plain import PaddingMode

Family = Literal["repvgg", "repopt_vgg", "mobileone"]
DEFAULT_BLOCK: dict[str, str] = {"repvgg": "repvgg", "repopt_vgg": "conv_bn", "mobileone": "mobileone"}
ALLOWED_BLOCKS: dict[str, set[str] | None] = {
    "repvgg": None,  # any registered family
    "repopt_vgg": {"conv_bn", "csla"},
    "mobileone": {"mobileone"},
}
PRESETS: dict[str, dict[str, Any]] = {
    "repvgg": presets.REPVGG,
    "repopt_vgg": presets.REPOPT_VGG,
    "mobileone": presets.MOBILEONE,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SEOptions(_Strict):
    reduction: int = Field(default=presets.SE_REDUCTION, gt=0)
    placement: Literal["pre_act", "post_act"] = "pre_act"


class StemSpec(_Strict):
    width: int = Field(gt=0)
    kernel_size: int = 3
    stride: int = Field(default=2, gt=0)


class StageSpec(_Strict):
    """``depth`` blocks of ``width`` channels; the first has ``stride``. For MobileOne, one block
    is a depthwise + pointwise pair. ``groups`` may list one value per block."""

    depth: int = Field(gt=0)
    width: int = Field(gt=0)
    stride: int = Field(default=2, gt=0)
    kernel_size: int = 3
    groups: int | list[int] = 1
    dilation: int = Field(default=1, gt=0)
    se: SEOptions | None = None
    se_blocks: int | None = Field(default=None, ge=0, description="SE on the last n blocks only")

    @model_validator(mode="after")
    def _check(self) -> StageSpec:
        if isinstance(self.groups, list) and len(self.groups) != self.depth:
            raise ValueError(f"groups lists {len(self.groups)} values for {self.depth} blocks")
        if self.se_blocks is not None and self.se_blocks > self.depth:
            raise ValueError(f"se_blocks={self.se_blocks} exceeds depth={self.depth}")
        return self

    def groups_at(self, index: int) -> int:
        return self.groups[index] if isinstance(self.groups, list) else self.groups

    def se_at(self, index: int) -> SEOptions | None:
        if self.se is None:
            return None
        first = 0 if self.se_blocks is None else self.depth - self.se_blocks
        return self.se if index >= first else None


class Preprocess(_Strict):
    """How /predict turns an image into the model's input (ImageNet defaults)."""

    resize: int = Field(default=256, gt=0, description="shorter side before the centre crop")
    crop: int = Field(default=224, gt=0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ArchSpec(_Strict):
    family: Family
    variant: str | None = None
    block: str | None = None
    stem: StemSpec | None = None
    stages: list[StageSpec] | None = None
    num_classes: int = Field(default=1000, gt=0)
    in_channels: int = Field(default=3, gt=0)
    input_size: tuple[int, int] = (224, 224)
    activation: str = "relu"
    padding_mode: PaddingMode = "zeros"
    bn_eps: float = Field(default=1e-5, gt=0)
    num_branches: int | None = Field(default=None, gt=0, description="MobileOne kxk branches")
    block_options: dict[str, Any] = Field(default_factory=dict)
    preprocess: Preprocess = Field(default_factory=Preprocess)
    labels: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> ArchSpec:
        explicit = self.stages is not None or self.stem is not None
        if (self.variant is None) == (not explicit):
            raise ValueError("give either 'variant' (a preset) or 'stem' + 'stages' (a custom net), not both")
        if explicit and (self.stem is None or not self.stages):
            raise ValueError("a custom net needs both 'stem' and a non-empty 'stages' list")
        if self.variant is not None and self.variant not in PRESETS[self.family]:
            known = ", ".join(PRESETS[self.family])
            raise ValueError(f"unknown {self.family} variant {self.variant!r}; known: {known}")
        block = self.block_family
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; known: {', '.join(BLOCKS.names())}")
        allowed = ALLOWED_BLOCKS[self.family]
        if allowed is not None and block not in allowed:
            raise ValueError(f"family {self.family!r} takes block {sorted(allowed)}, not {block!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS.names())}"
            )
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for num_classes={self.num_classes}")
        if min(self.input_size) < 1:
            raise ValueError(f"input_size {self.input_size} must be positive")
        return self

    @property
    def block_family(self) -> str:
        return (self.block or DEFAULT_BLOCK[self.family]).lower()

    @property
    def name(self) -> str:
        """Human-readable architecture name, e.g. ``repvgg-B1g4`` or ``repvgg[dbb]-custom``."""
        block = f"[{self.block_family}]" if self.block_family != DEFAULT_BLOCK[self.family] else ""
        return f"{self.family}{block}-{self.variant or 'custom'}"


def parse_spec(source: ArchSpec | dict[str, Any] | str | Path) -> ArchSpec:
    """Accept an ArchSpec, a dict, JSON/YAML text, or a path to a .json/.yaml/.yml file."""
    if isinstance(source, ArchSpec):
        return source
    data: Any = source
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        path = Path(source)
        try:
            data = path.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data)  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            raise SpecError(f"spec is neither valid JSON nor YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec must be a mapping, got {type(data).__name__}")
    try:
        return ArchSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, "spec")) from None


def _looks_like_path(text: str) -> bool:
    return (
        "\n" not in text
        and not text.lstrip().startswith(("{", "["))
        and text.endswith((".json", ".yaml", ".yml"))
    )
