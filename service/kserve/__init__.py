"""A converted version as a KServe deployment (``reparam export-kserve``).

``storage`` writes what KServe's TorchServe predictor reads from a ``storageUri``: ``config/
config.properties`` (whose ``model_snapshot`` registers the model at start) and ``model-store/
<name>.mar`` (a real model archive around this project's handler); ``manifests`` writes the
``ServingRuntime`` that runs this project's TorchServe image (docker/Dockerfile.torchserve: the stock
KServe image lacks ``reparam_core``) and the ``InferenceService`` that uses it; ``command`` is the CLI.
"""
