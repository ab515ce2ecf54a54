"""The KServe resources of an exported version: a ``ServingRuntime`` (or ``ClusterServingRuntime``,
``serving.kserve.io/v1alpha1``) running this project's TorchServe image on the storage layout of
``storage.py``, and an ``InferenceService`` (``serving.kserve.io/v1beta1``) whose predictor uses it.

The runtime's container follows KServe's own ``kserve-torchserve`` runtime: ``torchserve`` with
``--model-store`` and ``--ts-config`` under ``/mnt/models``, Prometheus annotations for port 8082,
a non-root user (1000, the image's ``model-server``) without privileges. ``--foreground`` because
this image has no entrypoint script that keeps the container alive. (config.properties turns
TorchServe 0.12's token authorization off, which would otherwise refuse every prediction without a
token: the inference port is KServe's to protect; the management API stays on the pod's loopback
with registration off.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from reparam_core import ReparamError

from .storage import CONFIG, METRICS_PORT, MODEL_ROOT, MODEL_STORE, NAME, Deployment

MODEL_FORMAT = "reparam"  # a format of our own: KServe never picks this runtime for a stock pytorch model
FORMAT_VERSION = "1"
# The storageUri prefixes KServe's controller accepts (SupportedStorageURIPrefixList in kserve/kserve,
# pkg/controller/v1beta1/inferenceservice/utils/utils.go)
STORAGE_SCHEMES = (
    "gs://",
    "s3://",
    "pvc://",
    "file://",
    "https://",
    "http://",
    "hdfs://",
    "webhdfs://",
    "oci://",
    "oci+native://",
    "oci+fetch://",
    "hf://",
)
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


@dataclass(frozen=True)
class Cluster:
    """Where and how the version runs in the cluster."""

    image: str
    storage_uri: str
    namespace: str | None = None
    runtime_name: str = "reparam-torchserve"
    cluster_runtime: bool = False
    service_account: str | None = None
    cpu: str = "1"
    memory: str = "2Gi"

    def __post_init__(self) -> None:
        if not IMAGE.fullmatch(self.image):
            raise ReparamError(f"image {self.image!r}: expected a container image reference")
        if not self.storage_uri.startswith(STORAGE_SCHEMES) or any(c.isspace() for c in self.storage_uri):
            raise ReparamError(
                f"storage URI {self.storage_uri!r}: expected one of KServe's storage schemes "
                f"({', '.join(STORAGE_SCHEMES)}) and no spaces"
            )
        for what, value in (
            ("namespace", self.namespace),
            ("runtime name", self.runtime_name),
            ("service account", self.service_account),
        ):
            if value is not None and not NAME.fullmatch(value):
                raise ReparamError(
                    f"{what} {value!r}: lowercase letters, digits and '-', starting with a letter"
                )
        for what, value in (("cpu", self.cpu), ("memory", self.memory)):
            if not QUANTITY.fullmatch(value):
                raise ReparamError(f"{what} {value!r}: expected a Kubernetes quantity such as 2, 500m, 4Gi")


def serving_runtime(cluster: Cluster) -> dict[str, Any]:
    resources = {"cpu": cluster.cpu, "memory": cluster.memory}
    container = {
        "name": "kserve-container",
        "image": cluster.image,
        "args": [
            "torchserve",
            "--start",
            "--foreground",
            f"--model-store={MODEL_ROOT}/{MODEL_STORE}",
            f"--ts-config={MODEL_ROOT}/{CONFIG.as_posix()}",
        ],
        "securityContext": {
            "runAsUser": 1000,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime" if cluster.cluster_runtime else "ServingRuntime",
        "metadata": _metadata(cluster.runtime_name, None if cluster.cluster_runtime else cluster.namespace),
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(METRICS_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": FORMAT_VERSION, "autoSelect": True}],
            "protocolVersions": ["v1"],
            "containers": [container],
        },
    }


def inference_service(deployment: Deployment, cluster: Cluster) -> dict[str, Any]:
    predictor: dict[str, Any] = {
        "model": {
            "modelFormat": {"name": MODEL_FORMAT, "version": FORMAT_VERSION},
            "runtime": cluster.runtime_name,
            "storageUri": cluster.storage_uri,
        }
    }
    if cluster.service_account is not None:  # e.g. one holding the S3 credentials
        predictor["serviceAccountName"] = cluster.service_account
    metadata = _metadata(deployment.name, cluster.namespace)
    metadata["labels"] = {"reparam/model": deployment.name, "reparam/version": str(deployment.version)}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


def manifests_yaml(deployment: Deployment, cluster: Cluster) -> str:
    """Both resources as one multi-document YAML file, the runtime first (``kubectl apply -f``)."""
    documents = [serving_runtime(cluster), inference_service(deployment, cluster)]
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)


def _metadata(name: str, namespace: str | None) -> dict[str, Any]:
    return {"name": name} if namespace is None else {"name": name, "namespace": namespace}
