"""Exports from several threads at once (a conversion beside the service's background exports):
without :data:`reparam_core.deploy.tracing.TRACING` each of them fails ("Failed to export the model
with torch.export")."""

from __future__ import annotations

import threading
from pathlib import Path

from reparam_core import build_train_model, convert
from reparam_core.deploy import export_onnx, export_program
from tests.helpers import SERVICE_SPEC, randomize_


def test_concurrent_onnx_and_program_exports_all_succeed(tmp_path: Path) -> None:
    result = convert(SERVICE_SPEC, randomize_(build_train_model(SERVICE_SPEC)).state_dict())
    net, shape = result.deploy_model, result.deploy_spec.sample_shape()
    errors: list[BaseException] = []

    def export(index: int) -> None:
        try:
            if index % 2:
                export_program(net, (2, *shape), tmp_path / f"{index}.pt2")
            else:
                export_onnx(net, shape)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
