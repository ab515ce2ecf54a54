"""What a converted model is and how it runs: everything a server needs, nothing of the conversion.

``spec`` (the JSON :class:`DeploySpec`), ``net`` (the plain deploy net, and the ``StagedNet``
container it shares with training nets), ``artifacts`` (the files of a conversion, written
atomically, read back strictly), ``preprocess`` (image normalisation) and ``serving`` (precision,
memory format, compilation and warm-up of a served net). A TorchServe worker or any other server
imports this package only: no block families, checkpoints or conversion code are loaded.
"""

from .artifacts import (
    PROGRAM,
    REPORT,
    SPEC,
    WEIGHTS,
    export_program,
    load_artifacts,
    sha256_file,
    write_artifacts,
)
from .net import FusedConv, PlainNet, StagedNet, build_deploy_model
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Interpolation, PixelNormaliser, Preprocess
from .serving import (
    SERVING_FILE,
    ServingModel,
    ServingOptions,
    exact_fp32,
    parse_serving,
    prepare_for_serving,
    warmup_batch_sizes,
)
from .spec import ConvLayerSpec, DeploySpec, PaddingMode

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROGRAM",
    "REPORT",
    "SERVING_FILE",
    "SPEC",
    "WEIGHTS",
    "ConvLayerSpec",
    "DeploySpec",
    "FusedConv",
    "Interpolation",
    "PaddingMode",
    "PixelNormaliser",
    "PlainNet",
    "Preprocess",
    "ServingModel",
    "ServingOptions",
    "StagedNet",
    "build_deploy_model",
    "exact_fp32",
    "export_program",
    "load_artifacts",
    "parse_serving",
    "prepare_for_serving",
    "sha256_file",
    "warmup_batch_sizes",
    "write_artifacts",
]
