"""ArchSpec: what network a checkpoint belongs to, as JSON or YAML.

Minimal form: ``{"family": "repvgg", "variant": "B1g4", "num_classes": 1000}``. RepVGG-style nets
can swap their block (``"block": "acb" | "dbb" | "orepa" | "csla" | ...``). Instead of a
``variant``, ``stem`` + ``stages`` describe a custom net explicitly. Stride, padding mode,
dilation, BN eps, activation and SE placement cannot be read from a checkpoint's shapes: they
come from here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..blocks import BLOCKS
from ..deploy.preprocess import Preprocess
from ..deploy.spec import PaddingMode
from ..errors import SpecError, describe_validation_error
from ..labels import standard_labels
from ..layers import ACTIVATIONS
from . import mobileone, vgg  # noqa: F401  (registers the families)
from .bounds import (
    MAX_BN_EPS,
    MAX_BRANCHES,
    MAX_CLASSES,
    MAX_IN_CHANNELS,
    MAX_INPUT_SIDE,
    MAX_SPEC_CHARS,
    MAX_SPEC_NESTING,
    MAX_STAGES,
)
from .layout import FAMILIES, Family
from .stages import StageSpec, StemSpec


class ArchSpec(BaseModel):
    """A training net: a family preset (``variant``) or explicit ``stem`` + ``stages``, and what
    a checkpoint cannot tell (strides, padding mode, activation, BN eps, SE, preprocessing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    variant: str | None = None
    block: str | None = None
    stem: StemSpec | None = None
    stages: list[StageSpec] | None = Field(default=None, max_length=MAX_STAGES)
    num_classes: int = Field(default=1000, gt=0, le=MAX_CLASSES)
    in_channels: int = Field(default=3, gt=0, le=MAX_IN_CHANNELS)
    input_size: tuple[int, int] = (224, 224)
    activation: str = "relu"
    padding_mode: PaddingMode = "zeros"
    bn_eps: float = Field(default=1e-5, gt=0, le=MAX_BN_EPS)
    num_branches: int | None = Field(
        default=None, gt=0, le=MAX_BRANCHES, description="MobileOne kxk branches"
    )
    block_options: dict[str, Any] = Field(default_factory=dict)
    preprocess: Preprocess = Field(default_factory=Preprocess)
    labels: list[str] | None = Field(
        default=None, description="class names, or a standard set's name: 'imagenet-1k'"
    )

    @model_validator(mode="before")
    @classmethod
    def _family_preprocess(cls, data: Any) -> Any:
        """What ``preprocess`` leaves out comes from the family's reference evaluation (timm's
        pretrained configs); a given ``resize`` stands for itself, without the family's crop_pct."""
        if not isinstance(data, dict) or data.get("family") not in FAMILIES:
            return data
        given = data.get("preprocess") or {}
        if not isinstance(given, dict):  # a Preprocess already
            return data
        variant = data.get("variant")
        defaults = FAMILIES.get(data["family"]).preprocess(variant if isinstance(variant, str) else None)
        if given.get("resize") is not None:
            defaults.pop("crop_pct", None)
        return {**data, "preprocess": {**defaults, **given}}

    @field_validator("labels", mode="before")
    @classmethod
    def _standard_labels(cls, value: Any) -> Any:
        return list(standard_labels(value)) if isinstance(value, str) else value

    @field_validator("family", mode="before")
    @classmethod
    def _lower_family(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> ArchSpec:
        family = self.family_info  # unknown names are refused with the known ones listed
        explicit = self.stages is not None or self.stem is not None
        if self.variant is None and not explicit:
            raise ValueError("give 'variant' (a preset) or 'stem' + 'stages' (a custom net)")
        if self.variant is not None and explicit:
            raise ValueError("give either 'variant' (a preset) or 'stem' + 'stages' (a custom net), not both")
        if explicit and (self.stem is None or not self.stages):
            raise ValueError("a custom net needs both 'stem' and a non-empty 'stages' list")
        if self.variant is not None and self.variant not in family.presets:
            known = ", ".join(family.presets)
            raise ValueError(f"unknown {self.family} variant {self.variant!r}; known: {known}")
        block = self.block_family
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; known: {', '.join(BLOCKS.names())}")
        allowed = family.allowed_blocks
        if allowed is not None and block not in allowed:
            raise ValueError(f"family {self.family!r} takes block {sorted(allowed)}, not {block!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS.names())}"
            )
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for num_classes={self.num_classes}")
        smallest = self.total_stride
        if not smallest <= min(self.input_size) or max(self.input_size) > MAX_INPUT_SIDE:
            raise ValueError(
                f"input_size {list(self.input_size)}: each side must be between {smallest} (the net "
                f"downsamples {smallest}x: a smaller input has no pixels left at the last stage) and "
                f"{MAX_INPUT_SIDE}"
            )
        return self

    @property
    def total_stride(self) -> int:
        """How much the net downsamples: the stem's stride times every stage's."""
        stem, stages = (
            self.family_info.expand(self.variant) if self.variant is not None else (self.stem, self.stages)
        )
        assert stem is not None and stages is not None  # guaranteed by _check
        return stem.stride * math.prod(stage.stride for stage in stages)

    @property
    def family_info(self) -> Family:
        return FAMILIES.get(self.family)

    @property
    def block_family(self) -> str:
        return (self.block or self.family_info.default_block).lower()

    @property
    def name(self) -> str:
        """Human-readable architecture name, e.g. ``repvgg-B1g4`` or ``repvgg[dbb]-custom``."""
        block = f"[{self.block_family}]" if self.block_family != self.family_info.default_block else ""
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
        data = _parse_text(data)
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


def _parse_text(text: str) -> Any:
    """JSON, else YAML without aliases; bounded in length and nesting (a few kB of YAML aliases
    can expand to gigabytes, and deep nesting exhausts the parsers' recursion)."""
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(f"spec of {len(text)} characters; at most {MAX_SPEC_CHARS}")
    try:
        data = json.loads(text)
    except RecursionError:
        raise SpecError(f"spec nested deeper than {MAX_SPEC_NESTING} levels") from None
    except ValueError:
        try:
            data = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader without aliases
        except yaml.YAMLError as exc:
            raise SpecError(f"spec is neither valid JSON nor YAML: {exc}") from None
    if _nesting(data) > MAX_SPEC_NESTING:
        raise SpecError(f"spec nested deeper than {MAX_SPEC_NESTING} levels")
    return data


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing aliases and nesting beyond ``MAX_SPEC_NESTING``."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a spec", mark)
        self.depth += 1
        try:
            if self.depth > MAX_SPEC_NESTING:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "nested too deeply", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _nesting(data: Any, level: int = 0) -> int:
    if level > MAX_SPEC_NESTING or not isinstance(data, dict | list):
        return level
    children = data.values() if isinstance(data, dict) else data
    return max((_nesting(child, level + 1) for child in children), default=level + 1)
