"""TorchServe handler for reparam deploy nets (one class per file, as TorchServe requires).

The model folder (service/backends/archive.py) carries ``deploy_spec.json``, ``serving.json`` (the
version's serving options) and the net: ``model.safetensors`` for runtime torch, ``model.onnx``
alone for the ONNX runtimes (the worker then loads no PyTorch weights). The worker runs in the
Python environment that has ``reparam_core`` installed, rebuilds the net, prepares it as
``serving.json`` says and warms it up at batch size 1 and at TorchServe's batch size before the
worker reports ready.
Each request body is one tensor (safetensors bytes): uint8 pixels ``[n, H, W, C]``, normalised
here, or a preprocessed float batch ``[n, C, H, W]``. With TorchServe batching the handler gets
several requests, runs them as one batch (or one by one, when their image sizes differ) and
answers each with its own rows of the softmax probabilities, in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from reparam_core.deploy import (
    SERVING_FILE,
    ServingModel,
    exact_fp32,
    load_for_serving,
    parse_serving,
    warmup_batch_sizes,
)
from service.torchserve_handler.wire import pack, unpack


class ReparamHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        model_dir = Path(properties["model_dir"])
        options_file = model_dir / SERVING_FILE
        options = parse_serving(options_file.read_text() if options_file.exists() else None)
        exact_fp32()
        sizes = warmup_batch_sizes(int(properties.get("batch_size") or 1))
        self.served: ServingModel = load_for_serving(model_dir, options, self.device, sizes)
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> list[torch.Tensor]:
        return [unpack(request.get("body") or request.get("data") or b"") for request in data]

    def inference(self, data: list[torch.Tensor], *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        return self.served.answer_each(data)

    def postprocess(self, data: list[torch.Tensor]) -> list[bytes]:
        return [pack(part) for part in data]
