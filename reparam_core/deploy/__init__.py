"""What a converted model is and how it runs: everything a server needs, nothing of the conversion.

``spec`` (the JSON :class:`DeploySpec`), ``net`` (the plain deploy net, and the ``StagedNet``
container it shares with training nets), ``artifacts`` (the files of a conversion, written
atomically, read back strictly), ``preprocess`` (image normalisation) and ``serving`` (precision,
memory format, compilation and warm-up of a served net), ``runtimes`` (``model.onnx`` and the
ONNX Runtime / OpenVINO runners) and ``cpu`` (the CPU's inference capabilities). A TorchServe
worker or any other server imports this package only: no block families, checkpoints or
conversion code are loaded.
"""

from .artifacts import (
    ONNX,
    ONNX_INT8,
    PROGRAM,
    REPORT,
    SPEC,
    WEIGHTS,
    export_program,
    load_artifacts,
    read_spec,
    sha256_file,
    write_artifacts,
)
from .cpu import CpuCapabilities, cpu_capabilities
from .net import FusedConv, PlainNet, StagedNet, build_deploy_model
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Interpolation, PixelNormaliser, Preprocess
from .runtimes import Runtime, export_onnx, runtime_versions
from .serving import (
    SERVING_FILE,
    ServingModel,
    ServingOptions,
    exact_fp32,
    load_for_serving,
    parse_serving,
    prepare_for_serving,
    served_precisions,
    warmup_batch_sizes,
)
from .spec import ConvLayerSpec, DeploySpec, PaddingMode

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ONNX",
    "ONNX_INT8",
    "PROGRAM",
    "REPORT",
    "SERVING_FILE",
    "SPEC",
    "WEIGHTS",
    "ConvLayerSpec",
    "CpuCapabilities",
    "DeploySpec",
    "FusedConv",
    "Interpolation",
    "PaddingMode",
    "PixelNormaliser",
    "PlainNet",
    "Preprocess",
    "Runtime",
    "ServingModel",
    "ServingOptions",
    "StagedNet",
    "build_deploy_model",
    "cpu_capabilities",
    "exact_fp32",
    "export_onnx",
    "export_program",
    "load_artifacts",
    "load_for_serving",
    "parse_serving",
    "prepare_for_serving",
    "read_spec",
    "runtime_versions",
    "served_precisions",
    "sha256_file",
    "warmup_batch_sizes",
    "write_artifacts",
]
