"""/predict with the in-process backend: inputs, outputs equal to the training net, errors, metrics."""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from httpx import Response
from PIL import Image

from reparam_core import standard_labels
from reparam_core.arch import build_train_model
from service.app import create_app
from service.config import Settings
from service.errors import BackendUnavailable
from service.routes.predict import MAX_QUERY_IMAGE
from tests.helpers import SERVICE_SPEC as SPEC
from tests.helpers import convert_form, make_checkpoint, model_input, png_bytes, randomize_, wait_ready


@pytest.fixture()
def served(client: TestClient, checkpoint: Path) -> TestClient:
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    return client


def training_probabilities(batch: torch.Tensor) -> torch.Tensor:
    model = randomize_(build_train_model(SPEC), seed=0).eval()  # the checkpoint fixture's weights
    with torch.no_grad():
        return torch.softmax(model(batch), dim=1)


def test_png_prediction_matches_the_training_model(served: TestClient) -> None:
    image = png_bytes()
    response = served.post("/predict/tiny?top_k=4", content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny" and body["version"] == 1
    predictions = body["predictions"][0]
    expected = training_probabilities(model_input(image, SPEC["preprocess"], 3))[0]
    assert predictions[0]["index"] == int(expected.argmax())
    assert predictions[0]["label"] == SPEC["labels"][predictions[0]["index"]]
    for item in predictions:
        assert item["probability"] == pytest.approx(float(expected[item["index"]]), abs=1e-5)
    timing = response.headers["Server-Timing"]
    assert all(part in timing for part in ("decode;dur=", "backend;dur=", "total;dur="))


def test_jpeg_json_and_get_forms(served: TestClient) -> None:
    jpeg = served.post("/predict/tiny", content=png_bytes(fmt="JPEG"), headers={"Content-Type": "image/jpeg"})
    assert jpeg.status_code == 200 and len(jpeg.json()["predictions"][0]) == 4
    encoded = base64.urlsafe_b64encode(png_bytes(seed=3)).decode().rstrip("=")
    get = served.get(f"/predict/tiny?image={encoded}&top_k=2&version=1")
    assert get.status_code == 200 and len(get.json()["predictions"][0]) == 2
    batch = torch.randn(3, 3, 32, 32)
    posted = served.post("/predict/tiny", json={"inputs": batch.tolist(), "top_k": 1})
    assert posted.status_code == 200 and len(posted.json()["predictions"]) == 3
    expected = training_probabilities(batch).argmax(1).tolist()
    assert [p[0]["index"] for p in posted.json()["predictions"]] == expected


def test_error_paths(served: TestClient) -> None:
    assert (
        served.post("/predict/nope", content=png_bytes(), headers={"Content-Type": "image/png"}).status_code
        == 404
    )
    assert served.get(f"/predict/tiny?version=9&image={'A' * 8}").status_code == 404
    garbage = b"\x89PNG\r\n\x1a\ngarbage"  # PNG's signature, then nothing of a PNG
    bad = served.post("/predict/tiny", content=garbage, headers={"Content-Type": "image/png"})
    assert bad.status_code == 422 and "cannot decode as PNG" in bad.json()["detail"]
    media = served.post("/predict/tiny", content=b"GIF89a", headers={"Content-Type": "image/gif"})
    assert media.status_code == 415
    shape = served.post("/predict/tiny", json={"inputs": [[1.0, 2.0]]})
    assert shape.status_code == 422 and "C=3" in shape.json()["detail"]
    rows = ", ".join(["[" + ", ".join(["NaN"] * 8) + "]"] * 8)
    nan_body = ('{"inputs": [' + ", ".join([f"[{rows}]"] * 3) + "]}").encode()
    nan = served.post("/predict/tiny", content=nan_body, headers={"Content-Type": "application/json"})
    assert nan.status_code == 422
    assert served.post("/predict/tiny", json={"inputs": []}).status_code == 422
    assert (
        served.post("/predict/tiny", content=b"{", headers={"Content-Type": "application/json"}).status_code
        == 422
    )
    assert served.get("/predict/tiny?image=!!!").status_code == 422
    assert served.get(f"/predict/tiny?image={'A' * 8}&top_k=0").status_code == 422


def test_images_are_decoded_by_content_and_only_png_jpeg_and_webp(served: TestClient) -> None:
    def post(body: bytes, media: str) -> Response:
        return served.post("/predict/tiny?top_k=4", content=body, headers={"Content-Type": media})

    as_png = post(png_bytes(), "image/png")
    assert as_png.status_code == 200
    assert post(png_bytes(), "image/jpeg").json() == as_png.json()  # the label need not match
    webp = post(png_bytes(fmt="WEBP"), "image/webp")
    assert webp.status_code == 200, webp.text
    expected = training_probabilities(model_input(png_bytes(fmt="WEBP"), SPEC["preprocess"], 3))[0]
    assert webp.json()["predictions"][0][0]["index"] == int(expected.argmax())
    for fmt in ["GIF", "TIFF", "BMP", "ICO", "EPS", "PCX"]:
        refused = post(png_bytes(fmt=fmt), "image/png")
        assert refused.status_code == 415, (fmt, refused.text)
        assert "not PNG, JPEG or WebP" in refused.json()["detail"]


def test_an_extreme_aspect_ratio_is_refused_before_it_is_resized(served: TestClient) -> None:
    """A 1x60000 PNG of a few hundred bytes would resize to 36x2160000 pixels (311 MB in Pillow)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 60000)).save(buffer, format="PNG")
    thin = buffer.getvalue()
    posted = served.post("/predict/tiny", content=thin, headers={"Content-Type": "image/png"})
    encoded = base64.urlsafe_b64encode(thin).decode().rstrip("=")
    got = served.get(f"/predict/tiny?image={encoded}")
    for response in (posted, got):
        assert response.status_code == 422
        assert response.json()["detail"].startswith(
            "image of 1x60000 pixels: its resize to 36x2160000 is over"
        )


def test_backend_down_is_503_with_retry_after(served: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def down(*args: object) -> torch.Tensor:
        raise BackendUnavailable("TorchServe unreachable")

    monkeypatch.setattr(served.app.state.backend, "predict", down)
    response = served.post("/predict/tiny", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"


def test_metrics_have_latency_histograms(served: TestClient) -> None:
    for _ in range(3):
        served.post("/predict/tiny", content=png_bytes(), headers={"Content-Type": "image/png"})
    text = served.get("/metrics").text
    assert 'reparam_predict_latency_seconds_count{model="tiny",version="1"} 3.0' in text
    assert 'reparam_predict_backend_latency_seconds_bucket{le="0.5",model="tiny",version="1"}' in text
    assert 'reparam_conversion_stage_seconds_count{stage="fuse"} 1.0' in text
    assert 'reparam_http_requests_total{method="POST",route="/predict/{name}",status="200"} 3.0' in text
    assert "reparam_model_versions_registered 1.0" in text


def test_health_and_readiness(served: TestClient) -> None:
    assert served.get("/healthz").json() == {"status": "ok"}
    ready = wait_ready(served)
    assert ready == {
        "store": True,
        "backend": "inprocess",
        "state": "ready",
        "pending": 0,
        "failed": [],
        "detail": None,
    }


def test_restart_registers_stored_versions_again(settings: Settings, checkpoint: Path) -> None:
    with TestClient(create_app(settings)) as first:
        assert first.post("/convert", **convert_form(checkpoint)).status_code == 201
    with TestClient(create_app(settings)) as second:
        wait_ready(second)
        response = second.post("/predict/tiny", content=png_bytes(), headers={"Content-Type": "image/png"})
        assert response.status_code == 200 and response.json()["version"] == 1


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        ({"json": {"inputs": [[[0.0] * 8] * 8] * 3, "top_k": None}}, 200),
        ({"json": {"inputs": [[[0.0] * 8] * 8] * 3, "top_k": "three"}}, 422),
        ({"json": {"inputs": [[[0.0] * 8] * 8] * 3, "top_k": 2.5}}, 422),
        ({"content": b'{"inputs": [1], "x": "\xff\xfe"}', "headers": JSON}, 422),  # invalid UTF-8
        ({"content": b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": JSON}, 422),
        ({"content": png_bytes(fmt="JPEG"), "headers": JSON}, 422),  # a JPEG labelled as JSON
        ({"json": ["not", "an", "object"]}, 422),
    ],
    ids=["top_k-null", "top_k-text", "top_k-float", "bad-utf8", "deep-nesting", "jpeg-as-json", "list-body"],
)
def test_odd_json_bodies_get_4xx_never_500(served: TestClient, request_args: dict, status: int) -> None:
    assert served.post("/predict/tiny", **request_args).status_code == status


def test_parameters_out_of_range_are_422_not_500(served: TestClient) -> None:
    huge = 2**63 + 1
    assert served.get(f"/models/tiny/versions/{huge}").status_code == 422
    assert served.get(f"/predict/tiny?version={huge}&image=AAAA").status_code == 422
    assert served.delete(f"/models/tiny/versions/{huge}").status_code == 422
    assert served.get("/models/tiny%0A").status_code == 422  # a name ending in a newline
    assert served.get("/models/tiny%0A/versions/1").status_code == 422


def test_405_lists_every_method_of_the_path(served: TestClient) -> None:
    answer = served.put("/models/tiny/versions/1")
    assert answer.status_code == 405
    assert set(answer.headers["Allow"].split(", ")) == {"DELETE", "GET"}


def test_metrics_document_their_content_type(served: TestClient) -> None:
    documented = served.get("/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert served.get("/metrics").headers["content-type"].split(";")[0] in documented


def test_a_standard_label_set_names_the_predictions(client: TestClient, tmp_path: Path) -> None:
    spec = {**SPEC, "num_classes": 1000, "labels": "imagenet-1k"}
    checkpoint = make_checkpoint(tmp_path / "imagenet.pth", spec)
    made = client.post("/convert", **convert_form(checkpoint, name="in1k", spec=spec))
    assert made.status_code == 201, made.text
    png = {"Content-Type": "image/png"}
    response = client.post("/predict/in1k?top_k=3", content=png_bytes(), headers=png)
    names = standard_labels("imagenet-1k")
    assert all(p["label"] == names[p["index"]] for p in response.json()["predictions"][0])
    assert names[:2] == ("tench", "goldfish") and len(names) == 1000


def test_a_query_image_past_its_limit_is_414_json(
    settings: Settings, checkpoint: Path, live_server: Any
) -> None:
    with live_server(settings) as (host, port):
        base = f"http://{host}:{port}"
        assert httpx.post(f"{base}/convert", timeout=120, **convert_form(checkpoint)).status_code == 201
        answer = httpx.get(f"{base}/predict/tiny?image={'A' * (MAX_QUERY_IMAGE + 1)}", timeout=30)
        assert answer.status_code == 414 and "POST it" in answer.json()["detail"], answer.text[:200]
        for size in (65_000, 200_000):  # past what the HTTP parser takes (httpx refuses such URLs)
            with socket.create_connection((host, port), timeout=30) as raw:
                raw.sendall(b"GET /predict/tiny?image=" + b"A" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                head, _, body = raw.recv(65536).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 414") and b"POST" in body, head


def test_the_root_says_what_the_service_is(client: TestClient) -> None:
    index = client.get("/").json()
    assert index["service"] == "reparam" and all(
        client.get(link).status_code == 200 for link in index["links"].values() if link != "/readyz"
    )


IMAGES = [png_bytes(48, 40, seed=1), png_bytes(40, 64, seed=2, fmt="JPEG"), png_bytes(33, 33, seed=3)]


def assert_answered_in_order(served: TestClient, images: list[bytes], batch: Response) -> None:
    assert batch.status_code == 200, batch.text
    for image, answer in zip(images, batch.json()["predictions"], strict=True):
        alone = served.post("/predict/tiny?top_k=4", content=image, headers={"Content-Type": "image/png"})
        expected = alone.json()["predictions"][0]
        assert [p["index"] for p in answer] == [p["index"] for p in expected]
        assert (
            max(abs(a["probability"] - e["probability"]) for a, e in zip(answer, expected, strict=True))
            < 1e-5
        )


def test_several_images_in_one_request_are_answered_in_order(served: TestClient) -> None:
    body = {"images": [base64.b64encode(image).decode() for image in IMAGES], "top_k": 4}
    assert_answered_in_order(served, IMAGES, served.post("/predict/tiny", json=body))
    both = served.post("/predict/tiny", json={"images": body["images"], "inputs": [[[0.0]]]})
    assert both.status_code == 422 and "either 'images' or 'inputs'" in both.json()["detail"]
    too_many = served.post("/predict/tiny", json={"images": body["images"] * 22})
    assert too_many.status_code == 422 and "at most 64" in too_many.json()["detail"]


def test_several_images_as_multipart_file_parts_are_answered_in_order(served: TestClient) -> None:
    parts = [("images", (f"{i}.img", image, "application/octet-stream")) for i, image in enumerate(IMAGES)]
    assert_answered_in_order(served, IMAGES, served.post("/predict/tiny?top_k=4", files=parts))
    other = served.post("/predict/tiny", files=parts, data={"top": "3"})
    assert other.status_code == 422 and "unexpected form field 'top'" in other.json()["detail"]
    text = served.post("/predict/tiny", files=[("images", (None, b"not a file"))])
    assert text.status_code == 422 and "must be file parts" in text.json()["detail"]
    assert served.post("/predict/tiny", files=parts[:1] * 65).status_code == 400  # at most 64
    broken = served.post(
        "/predict/tiny", files=[*parts, ("images", ("x.jpg", b"\xff\xd8\xffjunk", "image/jpeg"))]
    )
    assert broken.status_code in (415, 422)


def test_the_openapi_request_examples_work_when_sent(served: TestClient) -> None:
    sent = 0
    for path, methods in served.get("/openapi.json").json()["paths"].items():
        for method, operation in methods.items():
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                if "example" in content:
                    url = path.replace("{name}", "tiny")
                    answer = served.request(method, url, json=content["example"])
                    assert media == "application/json" and answer.status_code == 200, answer.text
                    sent += 1
    assert sent >= 1
