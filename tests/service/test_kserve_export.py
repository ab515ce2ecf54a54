"""``reparam export-kserve``: the layout KServe's TorchServe predictor documents, the manifests, and the
exported archive serving (through the handler, and in a real TorchServe started as the
ServingRuntime's container would start it). No Kubernetes cluster here: what KServe itself does
with the manifests is not exercised."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from reparam_core.arch import build_train_model
from reparam_core.cli import main
from reparam_core.conversion import convert
from reparam_core.deploy import ONNX, SERVING_FILE, SPEC, WEIGHTS, ServingOptions
from service.backends.archive import build_model_dir
from service.backends.torchserve_process import find_java_home, torchserve_executable
from service.torchserve_handler.handler import ReparamHandler
from service.torchserve_handler.wire import CONTENT_TYPE, pack, unpack
from tests.helpers import SERVICE_SPEC, randomize_, wait_for
from tests.service.test_torchserve_handler import FakeContext

IMAGE = "registry.example.com/reparam-torchserve:0.1.0"
BINARY = {"Content-Type": CONTENT_TYPE}  # as the service sends tensors (docs/operations.md#kserve)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A conversion's folder (with model.onnx too) and its deploy net."""
    folder = tmp_path_factory.mktemp("converted") / "deploy"
    result = convert(
        SERVICE_SPEC, randomize_(build_train_model(SERVICE_SPEC), seed=4).state_dict(), onnx=True
    )
    result.save(folder, export=False)
    return folder, result.deploy_model.eval()


def export(artifacts: Path, out: Path, *extra: str, name: str = "tiny-net") -> int:
    arguments = ["export-kserve", "--artifacts", str(artifacts), "--name", name, "--out", str(out)]
    arguments += ["--image", IMAGE, "--storage-uri", "s3://models/tiny-net", *extra]
    return main(arguments)


def read_properties(path: Path) -> dict[str, str]:
    """Java properties as TorchServe writes and reads them here: ``key=value`` lines, ``#`` comments."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    pairs = [line.split("=", 1) for line in lines]
    assert all(len(pair) == 2 for pair in pairs), lines
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_export_has_kserves_documented_layout_and_manifests(converted: Any, tmp_path: Path) -> None:
    artifacts, _ = converted
    out = tmp_path / "kserve"
    assert export(artifacts, out, "--version", "3", "--batch-size", "4", "--namespace", "vision") == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["kserve.yaml", "storage/config/config.properties", "storage/model-store/tiny-net.mar"]

    config = read_properties(out / "storage/config/config.properties")
    assert config["model_store"] == "/mnt/models/model-store"  # where KServe mounts the storageUri
    assert config["inference_address"] == "http://0.0.0.0:8080"
    assert config["metrics_address"] == "http://0.0.0.0:8082"
    assert config["management_address"].startswith("http://127.0.0.1:")
    assert config["enable_model_api"] == "false" and config["grpc_inference_address"] == "127.0.0.1"
    assert config["disable_token_authorization"] == "true"  # else TorchServe 0.12 wants a key per request
    snapshot = json.loads(config["model_snapshot"])
    assert snapshot["modelCount"] == len(snapshot["models"]) == 1
    version = snapshot["models"]["tiny-net"]["3"]
    assert version["defaultVersion"] is True and version["batchSize"] == 4
    store = out / "storage" / "model-store"
    assert (store / version["marName"]).is_file()

    with zipfile.ZipFile(store / version["marName"]) as mar:
        assert mar.testzip() is None
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        names = set(mar.namelist())
        assert manifest["modelName"] == "tiny-net" and manifest["modelVersion"] == "3"
        assert {manifest["handler"], manifest["serializedFile"], SPEC, SERVING_FILE} <= names
        assert manifest["serializedFile"] == WEIGHTS and ONNX not in names
        assert mar.read(WEIGHTS) == (artifacts / WEIGHTS).read_bytes()
        assert ServingOptions.model_validate_json(mar.read(SERVING_FILE)) == ServingOptions()

    runtime, service = yaml.safe_load_all((out / "kserve.yaml").read_text())
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ServingRuntime"
    assert runtime["metadata"] == {"name": "reparam-torchserve", "namespace": "vision"}
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    assert container["args"][:2] == ["torchserve", "--start"]
    assert "--model-store=/mnt/models/model-store" in container["args"]
    assert "--ts-config=/mnt/models/config/config.properties" in container["args"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8082"
    formats = runtime["spec"]["supportedModelFormats"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert service["metadata"]["name"] == "tiny-net" and service["metadata"]["namespace"] == "vision"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == "reparam-torchserve" and model["storageUri"] == "s3://models/tiny-net"
    assert model["modelFormat"]["name"] in {f["name"] for f in formats}


def test_the_handler_in_the_archive_serves_like_the_deploy_net(converted: Any, tmp_path: Path) -> None:
    artifacts, net = converted
    assert export(artifacts, tmp_path / "kserve", "--serving", '{"channels_last": false}') == 0
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(tmp_path / "kserve/storage/model-store/tiny-net.mar") as mar:
        mar.extractall(unpacked)
    handler = ReparamHandler()
    handler.initialize(FakeContext(unpacked))
    assert handler.served.options == ServingOptions(channels_last=False)
    first, second = torch.randn(2, 3, 32, 32), torch.randn(1, 3, 40, 36)
    outputs = handler.postprocess(
        handler.inference(handler.preprocess([{"body": pack(first)}, {"body": pack(second)}]))
    )
    with torch.no_grad():
        for got, x in zip(outputs, (first, second), strict=True):
            assert torch.allclose(unpack(got), torch.softmax(net(x), dim=1), atol=1e-6)


def test_an_onnx_runtime_export_carries_model_onnx_alone(converted: Any, tmp_path: Path) -> None:
    """Serving options from the folder's serving.json (as the service's model folders hold them)."""
    artifacts, net = converted
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name in (ONNX, SPEC):
        (folder / name).write_bytes((artifacts / name).read_bytes())
    (folder / SERVING_FILE).write_text('{"runtime": "onnxruntime"}')
    assert export(folder, tmp_path / "kserve") == 0
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(tmp_path / "kserve/storage/model-store/tiny-net.mar") as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"] == ONNX
        assert WEIGHTS not in mar.namelist()
        mar.extractall(unpacked)
    handler = ReparamHandler()
    handler.initialize(FakeContext(unpacked))
    assert handler.served.options.runtime == "onnxruntime"
    x = torch.randn(3, 3, 32, 32)
    (got,) = handler.postprocess(handler.inference(handler.preprocess([{"body": pack(x)}])))
    with torch.no_grad():
        assert torch.allclose(unpack(got), torch.softmax(net(x), dim=1), atol=1e-5)


def test_a_new_export_replaces_an_earlier_one_whole(converted: Any, tmp_path: Path) -> None:
    artifacts, _ = converted
    out = tmp_path / "kserve"
    assert export(artifacts, out, name="first") == 0
    assert export(artifacts, out, name="second") == 0
    assert sorted(p.name for p in (out / "storage/model-store").iterdir()) == ["second.mar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kserve"]  # no staging or old folder left


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--name": "Tiny_Net"}, "name 'Tiny_Net'"),
        ({"--storage-uri": "ftp://models/x"}, "storage URI"),
        ({"--image": "bad image"}, "image"),
        ({"--batch-size": "0"}, "batch-size 0"),
        ({"--memory": "lots"}, "memory 'lots'"),
        ({"--serving": '{"runtime": "openvino", "precision": "fp16"}'}, "serving"),
        ({"--artifacts": "missing"}, "is not a folder"),
        ({"--out": "unrelated"}, "neither empty nor an earlier export"),
        ({"tamper": ""}, "does not match the sha256"),
        ({"no-onnx": ""}, "does not hold it"),
    ],
)
def test_bad_input_exits_2_naming_it_and_writes_nothing(
    converted: Any, tmp_path: Path, change: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = converted
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for item in source.iterdir():
        (artifacts / item.name).write_bytes(item.read_bytes())
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "keep.txt").write_text("mine")
    options = {
        "--artifacts": str(artifacts),
        "--out": str(tmp_path / "kserve"),
        "--name": "tiny-net",
        "--image": IMAGE,
        "--storage-uri": "pvc://models/x",
    }
    if "tamper" in change:
        weights = bytearray((artifacts / WEIGHTS).read_bytes())
        weights[-1] ^= 1
        (artifacts / WEIGHTS).write_bytes(bytes(weights))
    elif "no-onnx" in change:
        (artifacts / ONNX).unlink()
        options["--serving"] = '{"runtime": "onnxruntime"}'
    else:
        folders = {"--artifacts", "--out"}
        options |= {key: str(tmp_path / value) if key in folders else value for key, value in change.items()}
    arguments = ["export-kserve", *(item for pair in options.items() for item in pair)]
    assert main(arguments) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "kserve").exists()
    assert (tmp_path / "unrelated" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "unrelated"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def torchserve_home(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """A folder for a TorchServe the test starts, and that TorchServe's process group killed after."""
    started: list[subprocess.Popen[bytes]] = []
    yield tmp_path, started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.skipif(
    find_java_home() is None or torchserve_executable() is None,
    reason="needs Java and the torchserve package",
)
def test_torchserve_started_as_the_runtime_starts_it_serves_the_export(
    converted: Any, torchserve_home: Any
) -> None:
    """The container's command from the ServingRuntime, on the exported storage (its paths under
    /mnt/models and its ports moved to this machine's loopback): TorchServe registers the model
    from model_snapshot and answers on its own and on KServe's v1 path; registration is refused."""
    artifacts, net = converted
    home, started = torchserve_home
    out = home / "kserve"
    assert export(artifacts, out, "--batch-size", "2") == 0
    storage = out / "storage"
    config = read_properties(storage / "config/config.properties")
    ports = {
        key: free_port()
        for key in ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    }
    for key in ("inference", "management", "metrics"):
        config[f"{key}_address"] = f"http://127.0.0.1:{ports[key]}"
    config["grpc_inference_port"], config["grpc_management_port"] = (
        str(ports["grpc_inference"]),
        str(ports["grpc_management"]),
    )
    config["model_store"] = str(storage / "model-store")
    (storage / "config/config.properties").write_text("".join(f"{k}={v}\n" for k, v in config.items()))
    runtime, _ = yaml.safe_load_all((out / "kserve.yaml").read_text())
    args = [arg.replace("/mnt/models", str(storage)) for arg in runtime["spec"]["containers"][0]["args"]]
    args[0] = str(torchserve_executable())
    (home / "tmp").mkdir()
    env = {**os.environ, "JAVA_HOME": str(find_java_home()), "TEMP": str(home / "tmp")}
    env |= {"LOG_LOCATION": str(home / "logs"), "METRICS_LOCATION": str(home / "logs")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = (home / "torchserve.out").open("wb")
    started.append(
        subprocess.Popen(
            args, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    )
    inference = f"http://127.0.0.1:{ports['inference']}"

    def model_ready() -> bool | None:
        assert started[0].poll() is None, (home / "torchserve.out").read_text()
        try:
            answer = httpx.get(f"http://127.0.0.1:{ports['management']}/models/tiny-net", timeout=2)
        except httpx.TransportError:
            return None
        workers = answer.json()[0]["workers"] if answer.status_code == 200 else []
        return True if workers and all(w["status"] == "READY" for w in workers) else None

    wait_for(model_ready, timeout=180, interval=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(net(x), dim=1)
    for path in ("/predictions/tiny-net", "/v1/models/tiny-net:predict"):
        answer = httpx.post(f"{inference}{path}", content=pack(x), headers=BINARY, timeout=60)
        assert answer.status_code == 200, answer.text
        assert torch.allclose(unpack(answer.content), expected, atol=1e-6)
    refused = httpx.post(f"http://127.0.0.1:{ports['management']}/models?url=tiny-net.mar", timeout=10)
    assert refused.status_code == 405  # enable_model_api=false: no registration, even from the pod
    assert httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).status_code == 200


def test_a_folder_of_the_services_model_store_exports_with_its_serving_options(
    converted: Any, tmp_path: Path
) -> None:
    artifacts, _ = converted
    serving = ServingOptions(channels_last=False, warmup_iterations=1)
    folder = build_model_dir("tiny", 2, artifacts, serving, tmp_path / "model-store")
    assert export(folder, tmp_path / "kserve") == 0
    with zipfile.ZipFile(tmp_path / "kserve/storage/model-store/tiny-net.mar") as mar:
        assert ServingOptions.model_validate_json(mar.read(SERVING_FILE)) == serving
        assert mar.read(WEIGHTS) == (artifacts / WEIGHTS).read_bytes()
