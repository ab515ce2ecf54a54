"""Building a TorchServe .mar from an artifact folder: our handler + deploy spec + weights.

No TorchScript, no pickled model: the worker rebuilds the plain net from ``deploy_spec.json``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HANDLER = Path(__file__).resolve().parent.parent / "torchserve_handler" / "handler.py"


def archive_name(name: str, version: int) -> str:
    return f"{name}-v{version}"


def build_mar(name: str, version: int, artifacts: Path, store: Path) -> Path:
    """Write ``<store>/<name>-v<version>.mar`` (replacing one left by an earlier run)."""
    store.mkdir(parents=True, exist_ok=True)
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
        str(artifacts / "model.safetensors"),
        "--extra-files",
        str(artifacts / "deploy_spec.json"),
        "--export-path",
        str(store),
        "--force",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {result.stderr.strip() or result.stdout.strip()}")
    return store / f"{archive_name(name, version)}.mar"
