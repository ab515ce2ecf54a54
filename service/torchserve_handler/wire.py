"""Tensors between the service and TorchServe workers: safetensors bytes, one tensor per message."""

from __future__ import annotations

from safetensors.torch import load, save
from torch import Tensor

CONTENT_TYPE = "application/vnd.reparam.safetensors"


def pack(tensor: Tensor) -> bytes:
    return save({"tensor": tensor.contiguous()})


def unpack(data: bytes | bytearray) -> Tensor:
    return load(bytes(data))["tensor"]
