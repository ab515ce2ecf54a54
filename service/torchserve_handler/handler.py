"""TorchServe handler for reparam deploy nets (one class per file, as TorchServe requires).

The .mar carries ``model.safetensors`` and ``deploy_spec.json``; the worker runs in the Python
environment that has ``reparam_core`` installed and rebuilds the plain net from the spec alone.
Each request body is a batch ``[n, C, H, W]`` (safetensors bytes); with TorchServe batching the
handler gets several requests, runs them as one batch and answers each with its own rows of the
softmax probabilities, in order.
"""

from __future__ import annotations

from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from reparam_core.artifacts import load_artifacts
from service.backends.wire import pack, unpack


class ReparamHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        self.model, _ = load_artifacts(properties["model_dir"], self.device)
        self.sizes: list[int] = []
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        batches = [unpack(request.get("body") or request.get("data") or b"") for request in data]
        self.sizes = [b.shape[0] for b in batches]
        return torch.cat(batches).to(self.device)

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(self.model(data), dim=1).float().cpu()

    def postprocess(self, data: torch.Tensor) -> list[bytes]:
        return [pack(part) for part in torch.split(data, self.sizes)]
