"""Architectures: the spec a user writes, the published presets, and the training nets they build.

``spec`` (:class:`ArchSpec`, parsed from JSON or YAML), ``stages`` (explicit stem and stages),
``layout`` (block specs, the family registry, instantiation), one module per architecture family
with its presets and stage layout (``vgg`` for RepVGG and RepOpt-VGG, ``mobileone``), and ``build``
(:func:`build_train_model`).
"""

from .build import block_layout, build_train_model, expand_stages
from .layout import FAMILIES, BlockSpec, Family, register_family
from .spec import ArchSpec, parse_spec
from .stages import SEOptions, StageSpec, StemSpec

__all__ = [
    "FAMILIES",
    "ArchSpec",
    "BlockSpec",
    "Family",
    "SEOptions",
    "StageSpec",
    "StemSpec",
    "block_layout",
    "build_train_model",
    "expand_stages",
    "parse_spec",
    "register_family",
]
