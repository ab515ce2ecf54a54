"""Inference backends, the choice between them (``select_backend``) and starting the chosen one."""

from __future__ import annotations

import logging

from ..config import Settings
from .base import InferenceBackend

log = logging.getLogger("reparam.backend")


class BackendStartError(RuntimeError):
    """The configured backend cannot start and nothing may stand in for it: the service stops."""


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


async def start_backend(settings: Settings) -> InferenceBackend:
    """The selected backend, started. A managed TorchServe that cannot start is replaced by the
    in-process backend under ``REPARAM_BACKEND=auto`` only (logged as an error); an explicit
    ``torchserve`` raises :class:`BackendStartError` instead."""
    backend = select_backend(settings)
    try:
        await backend.start()
    except Exception as exc:
        if settings.backend != "auto" or settings.torchserve_url:
            raise BackendStartError(
                f"REPARAM_BACKEND={settings.backend}: the {backend.name} backend cannot start: {exc}"
            ) from None
        log.error("TorchServe cannot start (%s): falling back to the in-process backend", exc)
        backend = in_process_backend(settings)
        await backend.start()
    return backend


__all__ = ["BackendStartError", "InferenceBackend", "in_process_backend", "select_backend", "start_backend"]
