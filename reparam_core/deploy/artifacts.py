"""Writing and reading the deploy artifacts of a conversion, atomically.

``model.safetensors`` (fused weights), ``deploy_spec.json`` (architecture), ``report.json``
(equivalence report, timings, digests) and ``model.pt2`` (a ``torch.export`` program with a
dynamic batch dimension, checked to reproduce the eager deploy net), ``model.onnx`` when the
conversion produced one (the fp32 deploy net in ONNX, dynamic batch, checked with ONNX Runtime
against the float64 training net; what the ONNX serving runtimes run), ``model.int8.onnx`` when
the conversion quantized it (serving precision int8). Everything is written into a
temporary sibling folder that replaces the target in one rename: a failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..equivalence import compare_outputs, random_input
from ..errors import ConversionError, ReparamError
from .net import PlainNet, build_deploy_model
from .spec import DeploySpec
from .tracing import TRACING

WEIGHTS = "model.safetensors"
SPEC = "deploy_spec.json"
REPORT = "report.json"
PROGRAM = "model.pt2"
ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
EXPORT_TOLERANCE = 1e-5  # exported vs eager fp32 deploy net, relative


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_artifacts(
    model: nn.Module,
    spec: DeploySpec,
    report: dict[str, Any],
    out_dir: str | Path,
    *,
    export: bool = True,
    onnx: bytes | None = None,
    onnx_int8: bytes | None = None,
) -> dict[str, str]:
    """Write a deploy net's artifacts to ``out_dir`` (replacing it whole); returns sha256 per file.

    ``report`` becomes ``report.json`` (with the digests of the other files added); ``onnx``, when
    given, ``model.onnx``; ``onnx_int8``, ``model.int8.onnx``."""
    with staged_folder(out_dir) as staging:
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS), metadata={"format": "pt"})
        (staging / SPEC).write_text(spec.model_dump_json(indent=2))
        if export:
            export_program(model, (2, *spec.sample_shape()), staging / PROGRAM)
        if onnx is not None:
            (staging / ONNX).write_bytes(onnx)
        if onnx_int8 is not None:
            (staging / ONNX_INT8).write_bytes(onnx_int8)
        return finish_with_report(staging, report)


def write_file_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary sibling of ``path``, then rename it into place: a failure
    leaves ``path`` as it was and no temporary file behind."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(out_dir: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` that replaces it in one rename on success, or vanishes."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        for item in staging.iterdir():
            item.chmod(0o644)
        staging.chmod(0o755)
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def finish_with_report(staging: Path, report: dict[str, Any]) -> dict[str, str]:
    """Write ``report.json`` (with the sha256 of every other file) and return all digests."""
    digests = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
    (staging / REPORT).write_text(json.dumps({**report, "sha256": digests}, indent=2))
    digests[REPORT] = sha256_file(staging / REPORT)
    return digests


def _replace_dir(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    backup = out.with_name(f".{out.name}.old")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(out, backup)
    os.replace(staging, out)
    shutil.rmtree(backup, ignore_errors=True)


def export_program(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """``torch.export`` a deploy net (dynamic batch), save it, reload it and check it reproduces the net."""
    # Batch 2 in the example: torch.export specialises a size-1 dimension, even one marked dynamic.
    example = random_input((2, *input_shape[1:])).to(next(model.parameters()).dtype)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with TRACING, torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
        reloaded = torch.export.load(str(path)).module()
        probe = example[:1]
        errors = compare_outputs(model(probe), reloaded(probe))
    if not errors["max_rel_error"] <= EXPORT_TOLERANCE:
        raise ConversionError(
            f"exported program differs from the deploy net: relative error {errors['max_rel_error']:.3e}"
        )


def read_spec(folder: str | Path) -> DeploySpec:
    """The ``deploy_spec.json`` of an artifact folder."""
    root = Path(folder)
    try:
        return DeploySpec.parse((root / SPEC).read_text())
    except OSError as exc:
        raise ReparamError(f"cannot read artifacts in {root}: {exc}") from None


def load_artifacts(folder: str | Path, device: str | torch.device = "cpu") -> tuple[PlainNet, DeploySpec]:
    """Rebuild the deploy net from ``deploy_spec.json`` and load ``model.safetensors`` into it (strict)."""
    root = Path(folder)
    spec = read_spec(root)
    try:
        weights = load_file(str(root / WEIGHTS), device=str(device))
    except OSError as exc:
        raise ReparamError(f"cannot read artifacts in {root}: {exc}") from None
    with torch.device("meta"):
        model = build_deploy_model(spec)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval(), spec
