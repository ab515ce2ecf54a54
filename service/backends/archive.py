"""The folder TorchServe registers a version from: our handler, the deploy spec, the net and the
version's serving options (``serving.json``), with the ``MAR-INF/MANIFEST.json`` that makes it a model
archive in TorchServe's "no-archive" format (a .mar unpacked).

No zip: the net is hard-linked from the artifact folder (copied only across file systems), so
preparing a version costs milliseconds whatever its size, where ``torch-model-archiver`` spent tens of
seconds deflating a 200 MB RepVGG-B1 into a .mar TorchServe then unpacked again. The folder is built
beside its final name and renamed into place whole.

No TorchScript, no pickled model: the worker rebuilds the plain net from ``deploy_spec.json`` and
``model.safetensors`` (runtime torch), or runs ``model.onnx`` (``model.int8.onnx`` for precision int8;
the ONNX runtimes: the folder carries
no PyTorch weights, and the worker loads none).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from reparam_core.deploy import SERVING_FILE, SPEC, WEIGHTS, ServingOptions

HANDLER = Path(__file__).resolve().parent.parent / "torchserve_handler" / "handler.py"
MANIFEST = Path("MAR-INF") / "MANIFEST.json"


def archive_name(name: str, version: int) -> str:
    return f"{name}-v{version}"


def version_of(model: str) -> tuple[str, int] | None:
    """``(name, version)`` of a TorchServe model named by :func:`archive_name`, else None."""
    name, separator, version = model.rpartition("-v")
    return (name, int(version)) if separator and name and version.isdigit() else None


def build_model_dir(name: str, version: int, artifacts: Path, serving: ServingOptions, store: Path) -> Path:
    """Write ``<store>/<name>-v<version>/`` (replacing one left by an earlier run) and return it."""
    net = artifacts / (serving.onnx_file if serving.onnx else WEIGHTS)
    if not net.is_file():
        raise RuntimeError(f"runtime {serving.runtime} serves {net.name}; {artifacts} does not hold it")
    store.mkdir(parents=True, exist_ok=True)
    model = archive_name(name, version)
    scratch = Path(tempfile.mkdtemp(prefix=f".{model}.", dir=store))
    try:
        _link(net, scratch / net.name)
        _link(artifacts / SPEC, scratch / SPEC)
        shutil.copyfile(HANDLER, scratch / HANDLER.name)
        (scratch / SERVING_FILE).write_text(serving.model_dump_json(indent=2))
        manifest = {
            "runtime": "python",
            "model": {
                "modelName": model,
                "modelVersion": str(version),
                "handler": HANDLER.name,
                "serializedFile": net.name,
            },
        }
        (scratch / MANIFEST).parent.mkdir()
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2))
        final = store / model
        remove_model_dir(final)
        os.replace(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return final


def remove_model_dir(folder: Path) -> None:
    """Remove a model folder (or a .mar an older release left) at once: renamed aside, then deleted."""
    if folder.is_dir():
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        os.replace(folder, aside / folder.name)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        folder.unlink(missing_ok=True)


def _link(source: Path, target: Path) -> None:
    """Hard link (the artifact files are never modified in place), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
