"""The spec's ``preprocess``: timm's crop_pct, torchvision's interpolations, bounds with precise
messages, a serialized form that carries everything /predict needs and validates again as is."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import ValidationError

from reparam_core import SpecError
from reparam_core.arch import parse_spec
from reparam_core.deploy import Preprocess
from reparam_core.deploy.preprocess import MAX_SIDE


def test_resize_is_given_or_follows_crop_pct_as_timm_computes_it() -> None:
    assert (Preprocess().resize, Preprocess().crop, Preprocess().interpolation) == (256, 224, "bilinear")
    assert Preprocess(resize=36, crop=32).resize == 36
    for crop, crop_pct in [(224, 0.9), (288, 0.95), (320, 1.0), (224, 0.875), (7, 0.3)]:
        assert Preprocess(crop=crop, crop_pct=crop_pct).resize == math.floor(crop / crop_pct)
    assert Preprocess(resize=248, crop=224, crop_pct=0.9).resize == 248  # both, agreeing


def test_serialized_form_carries_what_predict_needs_and_validates_again() -> None:
    for preprocess in [Preprocess(), Preprocess(crop=288, crop_pct=0.95, interpolation="bicubic")]:
        stored = preprocess.model_dump(mode="json")
        assert {"resize", "crop", "interpolation", "mean", "std"} <= stored.keys() and stored["resize"]
        assert Preprocess.model_validate(stored) == preprocess
    spec = parse_spec({"family": "repvgg", "variant": "A0", "preprocess": {"crop_pct": 0.9}})
    assert parse_spec(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resize": MAX_SIDE + 1}, "resize\n  Input should be less than or equal to 2048"),
        ({"crop": MAX_SIDE + 1, "resize": 16}, "crop\n  Input should be less than or equal to 2048"),
        ({"resize": 30, "crop": 32}, "crop 32 is larger than resize 30: the crop must fit"),
        ({"crop": 2000, "crop_pct": 0.5}, "resize = floor(crop / crop_pct) = 4000 is over 2048"),
        ({"crop_pct": 1.2}, "crop_pct\n  Input should be less than or equal to 1"),
        ({"crop_pct": 0}, "crop_pct\n  Input should be greater than 0"),
        ({"resize": 256, "crop_pct": 0.9}, "resize 256 disagrees with crop_pct 0.9 (floor(224 / 0.9) = 248)"),
        ({"interpolation": "cubic"}, "'nearest', 'bilinear', 'bicubic', 'box', 'hamming' or 'lanczos'"),
        ({"std": (0, 0, 0)}, "std (0.0, 0.0, 0.0) positive and finite"),
        ({"std": (1, 1, float("inf"))}, "positive and finite"),
        ({"mean": (0, float("nan"), 0)}, "must be finite"),
    ],
)
def test_out_of_bounds_and_contradictions_are_refused_precisely(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        Preprocess(**fields)


def test_spec_errors_name_the_preprocess_field() -> None:
    with pytest.raises(SpecError, match=r"spec.preprocess: .*crop 300 is larger than resize 256"):
        parse_spec({"family": "repvgg", "variant": "A0", "preprocess": {"resize": 256, "crop": 300}})
    with pytest.raises(
        SpecError, match=r"spec.preprocess.resize: Input should be less than or equal to 2048"
    ):
        parse_spec({"family": "repvgg", "variant": "A0", "preprocess": {"resize": 30000}})
