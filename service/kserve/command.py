"""``reparam export-kserve``: a converted version as a KServe deployment, written to ``--out``::

    storage/config/config.properties    copy storage/ to the --storage-uri (KServe's layout)
    storage/model-store/<name>.mar
    kserve.yaml                         ServingRuntime + InferenceService: kubectl apply -f

The folder is built beside ``--out`` and renamed into place whole (a failure leaves nothing, and an
earlier export intact).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from reparam_core.errors import ReparamError

if TYPE_CHECKING:  # imported when the command runs: every other command starts without torch
    from .manifests import Cluster
    from .storage import Deployment

STORAGE, MANIFESTS, MODEL_STORE = "storage", "kserve.yaml", "model-store"


def add_export_kserve_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export-kserve",
        help="write a converted version as a KServe deployment: TorchServe model storage and manifests",
    )
    export.add_argument(
        "--artifacts", required=True, type=Path, help="a conversion's folder (reparam convert --out)"
    )
    export.add_argument("--name", required=True, help="InferenceService and model name (lowercase, '-')")
    export.add_argument("--out", required=True, type=Path, help="folder to write (replaced whole)")
    export.add_argument(
        "--image", required=True, help="this project's TorchServe image (Dockerfile.torchserve)"
    )
    export.add_argument(
        "--storage-uri", required=True, help="where storage/ will be copied: s3://, pvc://, gs://..."
    )
    export.add_argument(
        "--version", type=int, default=1, help="the model's version in TorchServe (default 1)"
    )
    export.add_argument(
        "--serving",
        default=None,
        metavar="JSON",
        help="serving options as in POST /convert (default: the folder's serving.json, else the defaults)",
    )
    export.add_argument("--namespace", default=None, help="Kubernetes namespace of the resources")
    export.add_argument("--runtime-name", default="reparam-torchserve")
    export.add_argument(
        "--cluster-runtime", action="store_true", help="a ClusterServingRuntime instead of a ServingRuntime"
    )
    export.add_argument("--service-account", default=None, help="the predictor's (e.g. S3 credentials)")
    export.add_argument("--workers", type=int, default=1, help="TorchServe workers (default 1)")
    export.add_argument("--batch-size", type=int, default=1, help="TorchServe batch size (default 1)")
    export.add_argument("--max-batch-delay-ms", type=int, default=10)
    export.add_argument("--cpu", default="1", help="container CPU request and limit (default 1)")
    export.add_argument("--memory", default="2Gi", help="container memory request and limit (default 2Gi)")
    export.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from reparam_core.deploy import SERVING_FILE, parse_serving

    from .manifests import Cluster
    from .storage import Deployment

    serving_file = args.artifacts / SERVING_FILE
    if args.serving is None and serving_file.is_file():
        serving = parse_serving(serving_file.read_text())
    else:
        serving = parse_serving(args.serving)
    deployment = Deployment(
        name=args.name,
        version=args.version,
        serving=serving,
        workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
    )
    cluster = Cluster(
        image=args.image,
        storage_uri=args.storage_uri,
        namespace=args.namespace,
        runtime_name=args.runtime_name,
        cluster_runtime=args.cluster_runtime,
        service_account=args.service_account,
        cpu=args.cpu,
        memory=args.memory,
    )
    export_kserve(args.artifacts, deployment, cluster, args.out)
    print(f"{args.out}: {STORAGE}/ (copy it to {cluster.storage_uri}), {MANIFESTS} (kubectl apply -f)")
    return 0


def export_kserve(artifacts: Path, deployment: Deployment, cluster: Cluster, out: Path) -> None:
    """Write ``out/storage/`` and ``out/kserve.yaml``, replacing ``out`` whole."""
    from .manifests import manifests_yaml
    from .storage import write_storage

    if out.resolve() == artifacts.resolve() or out.resolve() in artifacts.resolve().parents:
        raise ReparamError(f"--out {out} would replace the artifacts it exports")
    if out.exists() and not _replaceable(out):
        raise ReparamError(f"--out {out} exists and is neither empty nor an earlier export: not replacing it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_storage(artifacts, deployment, staging / STORAGE)
        (staging / MANIFESTS).write_text(manifests_yaml(deployment, cluster))
        for path in (staging, staging / STORAGE, *(staging / STORAGE).iterdir()):
            path.chmod(0o755)
        for path in (staging / MANIFESTS, *(staging / STORAGE).glob("*/*")):
            path.chmod(0o644)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replaceable(out: Path) -> bool:
    return out.is_dir() and (not any(out.iterdir()) or (out / STORAGE / MODEL_STORE).is_dir())


def _replace(staging: Path, out: Path) -> None:
    if not out.exists() or not any(out.iterdir()):
        os.replace(staging, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, aside / out.name)
    os.replace(staging, out)
    shutil.rmtree(aside, ignore_errors=True)
