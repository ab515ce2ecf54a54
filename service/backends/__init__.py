"""Inference backends and the choice between them (see ``select_backend``)."""

from __future__ import annotations

import logging

from ..config import Settings
from .base import InferenceBackend

log = logging.getLogger("reparam.backend")


def in_process_backend(settings: Settings) -> InferenceBackend:
    """The embedded backend: deploy nets in the service process (no Java, no worker isolation)."""
    from .inprocess import InProcessBackend

    return InProcessBackend(settings.device, settings.batch_size)


def select_backend(settings: Settings) -> InferenceBackend:
    """TorchServe (external URL, or managed when Java and torchserve are present), else in-process."""
    if settings.backend == "inprocess":
        return in_process_backend(settings)
    from .torchserve import TorchServeBackend
    from .torchserve_process import find_java_home, torchserve_executable

    if settings.backend == "torchserve" or settings.torchserve_url:
        return TorchServeBackend(settings)
    if find_java_home() and torchserve_executable():
        return TorchServeBackend(settings)
    log.warning("Java or TorchServe not found: falling back to the in-process backend")
    return in_process_backend(settings)


__all__ = ["InferenceBackend", "in_process_backend", "select_backend"]
