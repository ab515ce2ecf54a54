"""The model storage KServe's TorchServe predictor reads from an InferenceService's ``storageUri``.

KServe's layout (its "Deploy a PyTorch Model with TorchServe InferenceService" page), downloaded by
its storage initializer to ``/mnt/models``::

    config/config.properties      TorchServe's settings; model_snapshot registers the model at start
    model-store/<name>.mar        the model archive (torch-model-archiver's zip, MAR-INF/MANIFEST.json)

The archive holds this project's handler, ``deploy_spec.json``, ``serving.json`` and the net
(``model.safetensors`` for runtime torch, ``model.onnx`` alone for the ONNX runtimes), like the
model folders the service registers (``service/backends/archive.py``), zipped because KServe's
TorchServe integration loads ``.mar`` files.

Addresses: TorchServe answers inference itself on 8080, the port KServe sends a predictor's traffic
to (the stock image puts KServe's Python wrapper there and TorchServe behind it on 8085; this
project's image has no wrapper, its handler reads safetensors bodies, not KServe's JSON). Metrics
on 8082 and gRPC on 7070/7071 as in KServe's sample; the management API and gRPC on the pod's
loopback only, with model registration off: nothing outside the pod can load or remove a model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reparam_core import ReparamError
from reparam_core.deploy import (
    ONNX,
    REPORT,
    SERVING_FILE,
    SPEC,
    WEIGHTS,
    ServingOptions,
    load_artifacts,
    read_spec,
    sha256_file,
)

from ..backends.archive import HANDLER

MODEL_ROOT = "/mnt/models"  # where KServe's storage initializer puts the storageUri's files
CONFIG = Path("config") / "config.properties"
MODEL_STORE = "model-store"  # also named in command.py, which imports nothing heavy
INFERENCE_PORT, METRICS_PORT, MANAGEMENT_PORT = 8080, 8082, 8081
GRPC_INFERENCE_PORT, GRPC_MANAGEMENT_PORT = 7070, 7071
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# An InferenceService name is a DNS-1035 label; KServe prefixes and suffixes it in the names of the
# Knative service and its host, so it stays well under 63 characters.
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$")


@dataclass(frozen=True)
class Deployment:
    """What the exported model is called and how TorchServe runs it."""

    name: str
    version: int = 1
    serving: ServingOptions = field(default_factory=ServingOptions)
    workers: int = 1
    batch_size: int = 1
    max_batch_delay_ms: int = 10
    response_timeout_s: int = 120

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ReparamError(
                f"name {self.name!r}: lowercase letters, digits and '-', starting with a letter, "
                "at most 45 characters (it names the InferenceService and the TorchServe model)"
            )
        for name, low, high in (
            ("version", 1, 10**9),
            ("workers", 1, 64),
            ("batch_size", 1, 1024),
            ("max_batch_delay_ms", 0, 60_000),
            ("response_timeout_s", 1, 3600),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ReparamError(f"{name.replace('_', '-')} {value}: expected {low} to {high}")

    @property
    def mar_name(self) -> str:
        return f"{self.name}.mar"


def model_snapshot(deployment: Deployment) -> dict[str, Any]:
    """The model_snapshot TorchServe restores at start: this one model, its workers and batching."""
    version = {
        "defaultVersion": True,
        "marName": deployment.mar_name,
        "minWorkers": deployment.workers,
        "maxWorkers": deployment.workers,
        "batchSize": deployment.batch_size,
        "maxBatchDelay": deployment.max_batch_delay_ms,
        "responseTimeout": deployment.response_timeout_s,
    }
    return {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {deployment.name: {str(deployment.version): version}},
    }


def config_properties(deployment: Deployment) -> dict[str, str]:
    """The lines of ``config/config.properties``, in order."""
    return {
        "inference_address": f"http://0.0.0.0:{INFERENCE_PORT}",
        "management_address": f"http://127.0.0.1:{MANAGEMENT_PORT}",
        "metrics_address": f"http://0.0.0.0:{METRICS_PORT}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": str(GRPC_INFERENCE_PORT),
        "grpc_management_port": str(GRPC_MANAGEMENT_PORT),
        "enable_metrics_api": "true",
        "metrics_format": "prometheus",
        "metrics_mode": "prometheus",
        "number_of_netty_threads": "4",
        "job_queue_size": "1000",
        "install_py_dep_per_model": "false",
        "enable_model_api": "false",
        "disable_token_authorization": "true",
        "max_request_size": str(MAX_MESSAGE_BYTES),
        "max_response_size": str(MAX_MESSAGE_BYTES),
        "model_store": f"{MODEL_ROOT}/{MODEL_STORE}",
        # Compact JSON on one line: no backslashes or line breaks for the properties format to escape
        # (the name pattern keeps quotes and backslashes out of the names).
        "model_snapshot": json.dumps(model_snapshot(deployment), separators=(",", ":")),
    }


def served_net(artifacts: Path, serving: ServingOptions) -> Path:
    """The net file of ``artifacts`` that ``serving``'s runtime loads, checked: the spec parses, the
    digests match ``report.json`` when the folder has one, and PyTorch weights load into the spec's
    net (strictly)."""
    if not artifacts.is_dir():
        raise ReparamError(f"{artifacts} is not a folder (expected the artifacts of a conversion)")
    read_spec(artifacts)
    net = artifacts / (ONNX if serving.onnx else WEIGHTS)
    if not net.is_file():
        raise ReparamError(f"runtime {serving.runtime} serves {net.name}; {artifacts} does not hold it")
    report = artifacts / REPORT
    if report.is_file():
        try:
            digests = json.loads(report.read_text()).get("sha256", {})
        except (ValueError, AttributeError):
            raise ReparamError(f"{report} is not a conversion report") from None
        for path in (net, artifacts / SPEC):
            if path.name in digests and sha256_file(path) != digests[path.name]:
                raise ReparamError(
                    f"{path} does not match the sha256 in {report.name}: altered after conversion"
                )
    if not serving.onnx:
        try:
            load_artifacts(artifacts, "cpu")
        except (RuntimeError, ValueError) as exc:
            raise ReparamError(f"{net} does not fit {SPEC}: {str(exc).splitlines()[0]}") from None
    return net


def write_storage(artifacts: Path, deployment: Deployment, folder: Path) -> None:
    """Write ``config/config.properties`` and ``model-store/<name>.mar`` into ``folder``."""
    net = served_net(artifacts, deployment.serving)
    (folder / CONFIG).parent.mkdir(parents=True)
    lines = config_properties(deployment)
    (folder / CONFIG).write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
    store = folder / MODEL_STORE
    store.mkdir()
    with tempfile.TemporaryDirectory() as scratch:
        options = Path(scratch) / SERVING_FILE
        options.write_text(deployment.serving.model_dump_json(indent=2))
        _archive(deployment, net, [artifacts / SPEC, options], store)
    if not (store / deployment.mar_name).is_file():
        raise RuntimeError(f"torch-model-archiver wrote no {deployment.mar_name} in {store}")


def _archive(deployment: Deployment, net: Path, extra: list[Path], store: Path) -> None:
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    command = [
        str(archiver if archiver.exists() else "torch-model-archiver"),
        "--model-name",
        deployment.name,
        "--version",
        str(deployment.version),
        "--handler",
        str(HANDLER),
        "--serialized-file",
        str(net),
        "--extra-files",
        ",".join(str(path) for path in extra),
        "--export-path",
        str(store),
        "--archive-format",
        "default",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ReparamError("torch-model-archiver is not installed: pip install 'reparam[service]'") from None
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {result.stderr.strip() or result.stdout.strip()}")
