from __future__ import annotations

import pytest

from reparam_core import BLOCKS, SpecError, UnknownNameError, register_block
from reparam_core.blocks import RepVGGBlock
from reparam_core.registry import Registry


def test_known_families_are_registered() -> None:
    assert set(BLOCKS.names()) == {
        "acb",
        "conv_bn",
        "csla",
        "dbb",
        "mobileone",
        "orepa",
        "orepa_large",
        "orepa_vgg",
        "qarepvgg",
        "qarepvgg_avg",
        "qarepvgg_v1",
        "repvgg",
    }
    assert BLOCKS.get("RepVGG") is RepVGGBlock


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown block family 'resnet'; known: acb, conv_bn"):
        BLOCKS.get("resnet")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(SpecError, match="'repvgg' is already registered"):
        register_block(RepVGGBlock)


def test_registry_is_case_insensitive_and_iterable() -> None:
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    assert registry.get("A") == 1 and "a" in registry and len(registry) == 1 and list(registry) == ["a"]


def test_architecture_families_register_where_they_are_defined() -> None:
    from reparam_core.arch import FAMILIES
    from reparam_core.arch.mobileone import MOBILEONE
    from reparam_core.arch.vgg import REPVGG

    assert FAMILIES.names() == ["mobileone", "qarepvgg", "repopt_vgg", "repvgg"]
    assert FAMILIES.get("repvgg").presets is REPVGG and FAMILIES.get("mobileone").presets is MOBILEONE
