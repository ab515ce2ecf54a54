"""POST /convert with calibration images: the quantization report in the version, INT8 served from
model.int8.onnx, and a net INT8 breaks refused (422) with nothing stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient

from reparam_core.deploy import ONNX, ONNX_INT8
from reparam_core.deploy.runtimes import onnx_runner
from service.calibration import MAX_CALIBRATION_BYTES
from tests.helpers import SERVICE_SPEC, model_input, png_bytes, state_of

INT8 = json.dumps({"runtime": "onnxruntime", "precision": "int8"})


def form(checkpoint: Path, images: list[bytes], serving: str | None = INT8) -> dict[str, Any]:
    files = [("checkpoint", (checkpoint.name, checkpoint.read_bytes(), "application/octet-stream"))]
    files += [("calibration", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
    data = {"spec": json.dumps(SERVICE_SPEC), "name": "tiny"}
    return {"files": files, "data": data | ({"serving": serving} if serving else {})}


def images(n: int = 32) -> list[bytes]:
    return [png_bytes(40 + i % 5, 36 + i % 3, seed=100 + i) for i in range(n)]


def test_int8_version_serves_the_quantized_model(client: TestClient, checkpoint: Path) -> None:
    response = client.post("/convert", **form(checkpoint, images()))
    assert response.status_code == 201, response.text
    body = response.json()
    report = body["report"]
    assert report["int8"]["passed"] and report["int8"]["held_out_samples"] == 8
    assert report["quantization"]["samples"] == 32 and len(report["quantization"]["worst_layers"]) == 3
    assert {"quantization", "int8"} <= set(body["timings"])
    stored = client.get("/models/tiny/versions/1").json()
    assert stored["report"]["quantization"] == report["quantization"]
    expected, x, folder = assert_served_from_int8_file(client, body["digest"])
    fp32 = torch.softmax(onnx_runner("onnxruntime", (folder / ONNX).read_bytes(), "fp32")(x), 1)[0]
    assert float((fp32 - expected).abs().max()) > 1e-4  # the answers tell the int8 model from fp32


def assert_served_from_int8_file(client: TestClient, digest: str) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """/predict answers what ONNX Runtime gives on the stored model.int8.onnx; returns those
    probabilities, the input and the artifact folder."""
    image = png_bytes(seed=7)
    answer = client.post("/predict/tiny?top_k=4", content=image, headers={"Content-Type": "image/png"})
    assert answer.status_code == 200
    folder = client.app.state.artifacts.local_path(digest)  # type: ignore[attr-defined]
    x = model_input(image, SERVICE_SPEC["preprocess"]).contiguous()
    expected = torch.softmax(onnx_runner("onnxruntime", (folder / ONNX_INT8).read_bytes(), "int8")(x), 1)[0]
    for item in answer.json()["predictions"][0]:
        assert abs(item["probability"] - float(expected[item["index"]])) < 1e-5
    return expected, x, folder


def test_calibration_images_alone_add_the_report(client: TestClient, checkpoint: Path) -> None:
    response = client.post("/convert", **form(checkpoint, images(4), serving=None))
    assert response.status_code == 201, response.text
    report = response.json()["report"]
    assert report["quantization"]["samples"] == 4 and report["int8"] is None


def planted() -> dict[str, torch.Tensor]:
    state = state_of(SERVICE_SPEC)
    state["stages.1.0.conv_kxk.conv.weight"][0] *= 300  # a channel the classifier ignores
    state["head.fc.weight"][:, 0] = 0
    return state


def test_a_net_int8_breaks_is_refused_and_nothing_is_stored(client: TestClient, tmp_path: Path) -> None:
    checkpoint = tmp_path / "planted.pt"
    torch.save(planted(), checkpoint)
    response = client.post("/convert", **form(checkpoint, images()))
    assert response.status_code == 422, response.text
    body = response.json()
    assert "int8 top-1 agreement" in body["detail"] and "worst layers: stages.1.0" in body["detail"]
    assert body["report"]["quantization"]["worst_layers"][0] == "stages.1.0"
    assert client.get("/models/tiny").status_code == 404


def test_the_planted_layer_kept_float_is_served(client: TestClient, tmp_path: Path) -> None:
    """The net full INT8 breaks, with its worst layer kept float32 (int8_float_layers 1): stored,
    the report saying which layer stayed float and what full INT8 measured, served from that
    model.int8.onnx."""
    checkpoint = tmp_path / "planted.pt"
    torch.save(planted(), checkpoint)
    mixed = json.dumps({**json.loads(INT8), "int8_float_layers": 1})
    response = client.post("/convert", **form(checkpoint, images(), serving=mixed))
    assert response.status_code == 201, response.text
    body = response.json()
    int8 = body["report"]["int8"]
    assert int8["passed"] and int8["float_layers"] == ["stages.1.0"] and int8["float_layers_option"] == 1
    assert [trial["passed"] for trial in int8["trials"]] == [False, True]
    assert body["report"]["quantization"]["worst_layers"][0] == "stages.1.0"
    assert_served_from_int8_file(client, body["digest"])


def test_bad_int8_float_layers_are_refused(client: TestClient, checkpoint: Path) -> None:
    for value, message in [
        (-1, "serving.int8_float_layers: an integer 0-8 (that many of the layers with the largest INT8"),
        (["stages.9.0"], "this net has no layer stages.9.0"),
        ("all", "not 'all'"),
        (4, "this net has 4 fused layers, so at most 3 can stay float32"),
    ]:
        serving = json.dumps({**json.loads(INT8), "int8_float_layers": value})
        response = client.post("/convert", **form(checkpoint, images(), serving=serving))
        assert response.status_code == 422 and message in response.json()["detail"], response.text
    fp32 = client.post("/convert", **form(checkpoint, images(), serving='{"int8_float_layers": "auto"}'))
    assert fp32.status_code == 422 and "needs precision int8" in fp32.json()["detail"]
    assert client.get("/models/tiny").status_code == 404


def test_bad_calibration_images_are_refused(client: TestClient, checkpoint: Path) -> None:
    too_many = client.post("/convert", **form(checkpoint, images(65)))
    assert too_many.status_code == 422 and "at most 64 images" in too_many.json()["detail"]
    not_an_image = client.post("/convert", **form(checkpoint, [*images(2), b"GIF89a..."]))
    assert not_an_image.status_code == 415 and "calibration image 3" in not_an_image.json()["detail"]
    few = client.post("/convert", **form(checkpoint, images(5)))
    assert few.status_code == 422 and "at least 8 inputs" in few.json()["detail"]
    large = client.post("/convert", **form(checkpoint, [b"\x89PNG\r\n\x1a\n" + bytes(MAX_CALIBRATION_BYTES)]))
    assert large.status_code == 422 and "MiB in all" in large.json()["detail"]
    assert client.get("/models/tiny").status_code == 404


def test_other_calibration_images_for_the_same_weights_are_a_conflict(
    client: TestClient, checkpoint: Path
) -> None:
    """Versions of the same weights share one model.int8.onnx: one quantized on other images would
    be served in its place, so it is refused; the same images again are a new version."""
    assert client.post("/convert", **form(checkpoint, images())).status_code == 201
    other = client.post("/convert", **form(checkpoint, images()[::-1][:24]))
    assert other.status_code == 409 and "other calibration inputs" in other.json()["detail"]
    again = form(checkpoint, images(), serving=json.dumps({**json.loads(INT8), "int8_min_agreement": 0.9}))
    assert client.post("/convert", **again).status_code == 201
    assert client.get("/models/tiny/versions/2").status_code == 200
    assert client.get("/models/tiny/versions/3").status_code == 404


def test_other_float_layers_for_the_same_weights_are_a_conflict(client: TestClient, checkpoint: Path) -> None:
    """Another int8_float_layers is another model.int8.onnx for the same weights' shared folder:
    refused (409) like other calibration inputs, the first version left as it was."""
    assert client.post("/convert", **form(checkpoint, images())).status_code == 201
    mixed = json.dumps({**json.loads(INT8), "int8_float_layers": 1})
    other = client.post("/convert", **form(checkpoint, images(), serving=mixed))
    assert other.status_code == 409, other.text
    assert client.get("/models/tiny/versions/2").status_code == 404
