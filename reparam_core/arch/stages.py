"""The explicit stem and stages of a net, as a spec states them (presets expand to these)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..layers import SEPlacement
from .bounds import MAX_DEPTH, MAX_DILATION, MAX_KERNEL, MAX_STRIDE, MAX_WIDTH

SE_REDUCTION = 16
BASE_WIDTHS = (64, 128, 256, 512)  # stage widths that the presets' multipliers scale


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SEOptions(_Strict):
    reduction: int = Field(default=SE_REDUCTION, gt=0, le=MAX_WIDTH)
    placement: SEPlacement = "pre_act"


class StemSpec(_Strict):
    width: int = Field(gt=0, le=MAX_WIDTH)
    kernel_size: int = Field(default=3, gt=0, le=MAX_KERNEL)
    stride: int = Field(default=2, gt=0, le=MAX_STRIDE)


class StageSpec(_Strict):
    """``depth`` blocks of ``width`` channels; the first has ``stride``. For MobileOne, one block
    is a depthwise + pointwise pair. ``groups`` may list one value per block."""

    depth: int = Field(gt=0, le=MAX_DEPTH)
    width: int = Field(gt=0, le=MAX_WIDTH)
    stride: int = Field(default=2, gt=0, le=MAX_STRIDE)
    kernel_size: int = Field(default=3, gt=0, le=MAX_KERNEL)
    groups: int | list[int] = 1
    dilation: int = Field(default=1, gt=0, le=MAX_DILATION)
    se: SEOptions | None = None
    se_blocks: int | None = Field(default=None, ge=0, description="SE on the last n blocks only")

    @model_validator(mode="after")
    def _check(self) -> StageSpec:
        if isinstance(self.groups, list) and len(self.groups) != self.depth:
            raise ValueError(f"groups lists {len(self.groups)} values for {self.depth} blocks")
        bad = [g for g in (self.groups if isinstance(self.groups, list) else [self.groups]) if g < 1]
        if bad or any(self.width % self.groups_at(j) for j in range(self.depth)):
            raise ValueError(f"groups {self.groups} must be positive divisors of width {self.width}")
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
