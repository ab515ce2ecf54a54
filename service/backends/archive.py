"""Building a TorchServe .mar from an artifact folder: our handler + deploy spec + the net + the
version's serving options (``serving.json``).

No TorchScript, no pickled model: the worker rebuilds the plain net from ``deploy_spec.json`` and
``model.safetensors`` (runtime torch), or runs ``model.onnx`` (the ONNX runtimes: the archive
carries no PyTorch weights, and the worker loads none).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from reparam_core.deploy import ONNX, SERVING_FILE, SPEC, WEIGHTS, ServingOptions

HANDLER = Path(__file__).resolve().parent.parent / "torchserve_handler" / "handler.py"


def archive_name(name: str, version: int) -> str:
    return f"{name}-v{version}"


def version_of(model: str) -> tuple[str, int] | None:
    """``(name, version)`` of a TorchServe model named by :func:`archive_name`, else None."""
    name, separator, version = model.rpartition("-v")
    return (name, int(version)) if separator and name and version.isdigit() else None


def build_mar(name: str, version: int, artifacts: Path, serving: ServingOptions, store: Path) -> Path:
    """Write ``<store>/<name>-v<version>.mar`` (replacing one left by an earlier run)."""
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store) as scratch:
        options = Path(scratch) / SERVING_FILE
        options.write_text(serving.model_dump_json(indent=2))
        net = artifacts / (ONNX if serving.onnx else WEIGHTS)
        if not net.is_file():
            raise RuntimeError(f"runtime {serving.runtime} serves {net.name}; {artifacts} does not hold it")
        return _archive(name, version, artifacts, net, options, store)


def _archive(name: str, version: int, artifacts: Path, net: Path, options: Path, store: Path) -> Path:
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    command = [
        str(archiver if archiver.exists() else "torch-model-archiver"),
        "--model-name",
        archive_name(name, version),
        "--version",
        str(version),
        "--handler",
        str(HANDLER),
        "--serialized-file",
        str(net),
        "--extra-files",
        f"{artifacts / SPEC},{options}",
        "--export-path",
        str(store),
        "--force",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {result.stderr.strip() or result.stdout.strip()}")
    return store / f"{archive_name(name, version)}.mar"
