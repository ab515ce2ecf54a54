"""The service log says what happened: conversions (and refusals), alias moves, deletions; JSON lines
on request."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import JsonLines
from tests.helpers import convert_form


def test_conversions_alias_moves_and_deletions_are_logged(
    client: TestClient, checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    assert (
        client.post("/convert", **convert_form(checkpoint, name="gated", tolerance="1e-30")).status_code
        == 422
    )
    assert client.put("/models/tiny/aliases/production", json={"version": 1}).status_code == 200
    assert client.delete("/models/tiny/aliases/production").status_code == 204
    assert client.delete("/models/tiny/versions/1").status_code == 204
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("reparam.")]
    assert any(
        line.startswith("converted tiny v1 (repvgg-custom") and "fp64 max relative error" in line
        for line in lines
    )
    assert any(line.startswith("conversion of gated (tiny.pth) failed the gate") for line in lines)
    assert "alias production of tiny: (new) -> v1 (by anonymous)" in lines
    assert "alias production of tiny removed (by anonymous)" in lines and "deleted tiny v1" in lines


def test_json_lines() -> None:
    record = logging.LogRecord("reparam.jobs", logging.INFO, __file__, 1, "converted %s v%d", ("m", 2), None)
    entry = json.loads(JsonLines().format(record))
    assert (
        entry["level"] == "INFO"
        and entry["logger"] == "reparam.jobs"
        and entry["message"] == "converted m v2"
    )
