"""reparam_core: fuse structurally re-parameterized CNNs into plain conv nets, exactly.

Pure PyTorch, no web imports. Bottom to top: ``fusion.transforms`` (the math) and
``equivalence`` (measuring two nets: torch and pydantic only), ``deploy`` (the deploy net, its
spec, artifacts and serving), ``blocks`` (the block families), ``fusion.swap`` and
``fusion.row_blocks`` (fusing blocks in a model), ``arch`` (specs, presets, training nets),
``checkpoints`` (safe reading, key layouts, strict loading), ``gate`` and ``conversion`` (the
pipeline), ``graph`` (fusion of any traceable model) and ``cli``.

Names are imported on first use: ``import reparam_core`` loads neither torch nor the conversion
pipeline, and a server that imports ``reparam_core.deploy`` loads only that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointError,
    ConversionError,
    EquivalenceError,
    ReparamError,
    SpecError,
    UnknownNameError,
)

__version__ = "0.1.0"

_LAZY = {
    "arch": ("ArchSpec", "build_train_model", "parse_spec"),
    "arch.bounds": ("Cost", "estimate_cost"),
    "blocks": ("BLOCKS", "ReparamBlock", "register_block"),
    "checkpoints": ("Weights", "inspect_checkpoint", "read_checkpoint"),
    "conversion": ("ConversionReport", "ConversionResult", "convert"),
    "deploy": (
        "ConvLayerSpec",
        "DeploySpec",
        "FusedConv",
        "PlainNet",
        "ServingModel",
        "ServingOptions",
        "StagedNet",
        "build_deploy_model",
        "load_artifacts",
        "make_reference",
        "parse_serving",
    ),
    "equivalence": ("EquivalenceReport", "check_equivalence", "resolve_device"),
    "fusion.swap": ("count_convs", "reparameterize"),
    "reference": ("Reference", "make_reference", "read_reference"),
    "quantization": ("MAX_CALIBRATION_SAMPLES", "Int8Report", "QuantizationReport", "quantization_report"),
    "gate": ("ServingReport", "check_onnx_export"),
    "labels": ("STANDARD_LABEL_SETS", "standard_labels"),
}
_SOURCE = {name: module for module, names in _LAZY.items() for name in names}


_SUBPACKAGES = (
    "arch",
    "blocks",
    "checkpoints",
    "conversion",
    "deploy",
    "equivalence",
    "fusion",
    "gate",
    "graph",
    "quantization",
)


def __getattr__(name: str) -> Any:
    module = _SOURCE.get(name)
    if module is None:
        if name in _SUBPACKAGES:  # `reparam_core.blocks` after a bare `import reparam_core`
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCE])


if TYPE_CHECKING:
    from .arch import ArchSpec, build_train_model, parse_spec
    from .arch.bounds import Cost, estimate_cost
    from .blocks import BLOCKS, ReparamBlock, register_block
    from .checkpoints import Weights, inspect_checkpoint, read_checkpoint
    from .conversion import ConversionReport, ConversionResult, convert
    from .deploy import (
        ConvLayerSpec,
        DeploySpec,
        FusedConv,
        PlainNet,
        ServingModel,
        ServingOptions,
        StagedNet,
        build_deploy_model,
        load_artifacts,
        parse_serving,
    )
    from .equivalence import EquivalenceReport, check_equivalence, resolve_device
    from .fusion.swap import count_convs, reparameterize
    from .gate import ServingReport, check_onnx_export
    from .labels import STANDARD_LABEL_SETS, standard_labels
    from .quantization import MAX_CALIBRATION_SAMPLES, Int8Report, QuantizationReport, quantization_report
    from .reference import Reference, make_reference, read_reference

__all__ = [
    "BLOCKS",
    "MAX_CALIBRATION_SAMPLES",
    "STANDARD_LABEL_SETS",
    "ArchSpec",
    "CheckpointError",
    "ConvLayerSpec",
    "ConversionError",
    "ConversionReport",
    "ConversionResult",
    "Cost",
    "DeploySpec",
    "EquivalenceError",
    "EquivalenceReport",
    "FusedConv",
    "Int8Report",
    "PlainNet",
    "QuantizationReport",
    "Reference",
    "ReparamBlock",
    "ReparamError",
    "ServingModel",
    "ServingOptions",
    "ServingReport",
    "SpecError",
    "StagedNet",
    "UnknownNameError",
    "Weights",
    "__version__",
    "build_deploy_model",
    "build_train_model",
    "check_equivalence",
    "check_onnx_export",
    "convert",
    "count_convs",
    "estimate_cost",
    "inspect_checkpoint",
    "load_artifacts",
    "make_reference",
    "parse_serving",
    "parse_spec",
    "quantization_report",
    "read_checkpoint",
    "read_reference",
    "register_block",
    "reparameterize",
    "resolve_device",
    "standard_labels",
]
