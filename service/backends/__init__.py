"""Inference backends and the choice between them (see ``select_backend``)."""

from __future__ import annotations

import logging

from ..config import Settings
from .base import InferenceBackend

log = logging.getLogger("reparam.backend")


def select_backend(settings: Settings) -> InferenceBackend:
    """TorchServe (external URL, or managed when Java and torchserve are present), else in-process."""
    if settings.backend == "inprocess":
        from .inprocess import InProcessBackend

        return InProcessBackend(settings.device, settings.batch_size)
    from .torchserve import TorchServeBackend
    from .torchserve_process import find_java_home, torchserve_executable

    if settings.backend == "torchserve" or settings.torchserve_url:
        return TorchServeBackend(settings)
    if find_java_home() and torchserve_executable():
        return TorchServeBackend(settings)
    from .inprocess import InProcessBackend

    log.warning("Java or TorchServe not found: falling back to the in-process backend")
    return InProcessBackend(settings.device, settings.batch_size)


__all__ = ["InferenceBackend", "select_backend"]
