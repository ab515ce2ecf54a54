"""/predict on photographs equals a timm model fed timm's own eval transform (torchvision Resize +
CenterCrop + ToTensor + Normalize from the model's pretrained config): the family's preprocessing
defaults are timm's, and the service's resize and crop are torchvision's to the pixel."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import convert_form

timm = pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

# scikit-image's bundled photographs, resized to aspect ratios a resize must get right.
PHOTOS = [("coffee", 605, 400), ("astronaut", 400, 605), ("chelsea", 1000, 300), ("coffee", 300, 1000)]
PHOTOS += [("chelsea", 451, 300), ("astronaut", 517, 517)]


def photo(name: str, width: int, height: int) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)()).resize((width, height))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def calibrated(model: torch.nn.Module, transform: Any) -> torch.nn.Module:
    """A randomly initialised timm net made sensitive to its input: BN statistics of the photos
    (as a trained net has them) and logits scaled to a spread of about 2, so that the softmax is
    neither saturated nor flat and a pixel more or less in the resize moves the probabilities."""
    batch = torch.stack([transform(photo(name, width, height)) for name, width, height in PHOTOS])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch
    with torch.no_grad():
        model.train()(batch)
        logits = model.eval()(batch)
        model.get_classifier().weight.mul_(2.0 / logits.std())
    return model


@pytest.mark.parametrize(
    ("timm_name", "spec", "overrides"),
    [
        ("repvgg_a0", {"family": "repvgg", "variant": "A0"}, {}),  # timm: crop_pct 0.875, bilinear
        ("mobileone_s1", {"family": "mobileone", "variant": "S1"}, {}),  # timm: crop_pct 0.9
        ("repvgg_a0", {"family": "repvgg", "variant": "A0"}, {"interpolation": "bicubic", "crop_pct": 0.95}),
    ],
    ids=["repvgg-defaults", "mobileone-defaults", "repvgg-bicubic-0.95"],
)
def test_predictions_equal_timm_with_its_eval_transform(
    client: TestClient, tmp_path: Path, timm_name: str, spec: dict[str, Any], overrides: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False, num_classes=10)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(overrides, model=model))
    model = calibrated(model, transform)
    checkpoint = tmp_path / f"{timm_name}.pth"
    torch.save(model.state_dict(), checkpoint)
    spec = {**spec, "num_classes": 10, "input_size": [64, 64]}
    if overrides:
        spec["preprocess"] = overrides
    converted = client.post("/convert", **convert_form(checkpoint, name="timm", spec=spec))
    assert converted.status_code == 201, converted.text
    for name, width, height in PHOTOS:
        image = png(photo(name, width, height))
        response = client.post("/predict/timm?top_k=5", content=image, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        served = response.json()["predictions"][0]
        with torch.no_grad():
            logits = model(transform(Image.open(io.BytesIO(image)).convert("RGB")).unsqueeze(0))
        top5 = torch.topk(torch.softmax(logits, dim=1)[0], 5)
        assert [p["index"] for p in served] == top5.indices.tolist(), (name, width, height)
        probabilities = np.array([p["probability"] for p in served])
        assert np.abs(probabilities - top5.values.numpy()).max() <= 1e-4, (name, width, height)
