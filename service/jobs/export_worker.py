"""One export in its own process: ``python -m service.jobs.export_worker FOLDER FILE OUT``.

Writes ``FILE`` (``model.onnx`` or ``model.pt2``) of the artifact folder ``FOLDER`` to ``OUT`` and
exits 0; on failure prints one line saying why to stderr and exits 1. ``model.onnx`` is kept only
when ONNX Runtime reproduces the stored net run in float64 (:func:`reparam_core.check_onnx_export`).

Why a process and not a thread of the service: tracing a net for ``torch.export`` is seconds to
minutes of Python holding the GIL (``/predict`` would wait on it), installs process-wide tracing
state, and builds ASTs, which CPython 3.11 up to 3.11.7 cannot do in two threads at once
("SystemError: AST constructor recursion depth mismatch" in the other thread). The worker runs on one
intra-op thread and ends when the service does: it exits as soon as its stdin, a pipe from the
service, is closed.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import torch

from reparam_core import check_onnx_export
from reparam_core.deploy import ONNX, PROGRAM, PlainNet, export_onnx, export_program, load_artifacts

ORPHANED = 70  # exit status when the service went away


def write_artifact(folder: Path, filename: str, out: Path) -> None:
    net, spec = load_artifacts(folder)
    if filename == ONNX:
        out.write_bytes(_checked_onnx(net))
    elif filename == PROGRAM:
        export_program(net, (2, *spec.sample_shape()), out)
    else:
        raise ValueError(f"no export writes {filename!r}")


def _checked_onnx(net: PlainNet) -> bytes:
    onnx = export_onnx(net, net.spec.sample_shape())
    check = check_onnx_export(onnx, net)
    if not check.passed:
        raise ValueError(
            f"model.onnx in ONNX Runtime differs from the stored net: max relative error "
            f"{check.max_rel_error:.3e} > {check.tolerance or 0:.3g}"
        )
    return onnx


def _exit_with_the_service() -> None:
    while os.read(0, 4096):  # b"" at end of file: the service closed the pipe, or died
        pass
    os._exit(ORPHANED)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m service.jobs.export_worker FOLDER FILE OUT", file=sys.stderr)
        return 2
    threading.Thread(target=_exit_with_the_service, daemon=True).start()
    torch.set_num_threads(1)
    try:
        write_artifact(Path(argv[0]), argv[1], Path(argv[2]))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".splitlines()[0][:500], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
