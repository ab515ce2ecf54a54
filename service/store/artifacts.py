"""Artifact folders addressed by the sha256 of their weights, written atomically.

Layout: ``<root>/sha256/<d[:2]>/<digest>/{model.safetensors, deploy_spec.json, report.json, model.pt2,
model.onnx, model.int8.onnx}``.
Identical conversions share one folder. ``s3.S3ArtifactStore`` keeps them in S3-compatible storage
(``REPARAM_ARTIFACTS_URL``) with such a folder as its local cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from reparam_core import ConversionResult
from reparam_core.deploy import ONNX, ONNX_INT8, PROGRAM, REPORT, SPEC, WEIGHTS, sha256_file

from ..config import Settings

FILES = (WEIGHTS, SPEC, REPORT, PROGRAM, ONNX, ONNX_INT8)


class ArtifactStore(Protocol):
    def put(self, result: ConversionResult, export: bool) -> str: ...
    def local_path(self, digest: str) -> Path: ...
    def add(self, digest: str, filename: str, write: Callable[[Path], object]) -> bool: ...
    def delete(self, digest: str) -> None: ...
    def clean_staging(self) -> int: ...


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def local_path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "sha256" / digest[:2] / digest

    def put(self, result: ConversionResult, export: bool = True) -> str:
        """Write the artifacts; returns the digest (sha256 of ``model.safetensors``) they live under."""
        staging = Path(tempfile.mkdtemp(dir=self.root / "tmp"))
        try:
            folder = staging / "artifacts"
            result.save(folder, export=export)
            digest = sha256_file(folder / WEIGHTS)
            final = self.local_path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.exists():
                try:
                    os.replace(folder, final)
                except OSError:  # a concurrent writer stored the same content first
                    if not final.exists():
                        raise
            _complete(final, folder)
            return digest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def delete(self, digest: str) -> None:
        folder = self.local_path(digest)
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the sha256/<d[:2]> folder, once no digest is left in it
            folder.parent.rmdir()

    def add(self, digest: str, filename: str, write: Callable[[Path], object]) -> bool:
        """One more file in a stored folder: ``write(path)`` to a staging file, then renamed into
        the folder (readers see it whole or not at all). False when the folder is gone (deleted)."""
        folder = self.local_path(digest)
        if not folder.is_dir():
            return False
        handle, name = tempfile.mkstemp(dir=self.root / "tmp", suffix=f".{filename}")
        os.close(handle)
        staging = Path(name)
        try:
            write(staging)
            staging.chmod(0o644)
            if not folder.is_dir():
                return False
            os.replace(staging, folder / filename)
            return True
        finally:
            staging.unlink(missing_ok=True)

    def clean_staging(self) -> int:
        """Remove uploads and half-written artifacts a stopped process left in ``tmp/``."""
        leftovers = list((self.root / "tmp").iterdir())
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return len(leftovers)


def _complete(final: Path, new: Path) -> None:
    """Add to a folder stored earlier for the same weights what it lacks (``model.onnx`` in folders
    from before it was an artifact), each file renamed into place whole."""
    if not new.exists():  # the new folder itself became ``final``
        return
    for name in FILES:
        if (new / name).exists() and not (final / name).exists():
            os.replace(new / name, final / name)


def artifact_store_from_settings(settings: Settings) -> ArtifactStore:
    if settings.artifacts_url is not None:
        from .s3 import S3ArtifactStore  # boto3 is loaded only where S3 is used

        return S3ArtifactStore(settings.artifacts_url, settings.resolved_artifacts_dir)
    return LocalArtifactStore(settings.resolved_artifacts_dir)
