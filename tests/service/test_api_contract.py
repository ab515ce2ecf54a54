"""The OpenAPI document is the contract: Schemathesis (every check, a fixed example budget and seed)
drives a live service with a converted model and finds no 5xx and no response outside the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings
from tests.helpers import convert_form

# Whether a spec fits a checkpoint (and passes the gate) is not something a schema can say.
CONFIG = """
[[operations]]
include-path = "/convert"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2XX", 400, 401, 404, 409, 422]
"""


def test_schemathesis_finds_no_5xx_and_no_contract_violation(
    settings: Settings, checkpoint: Path, tmp_path: Path, live_server: Any
) -> None:
    secured = settings.model_copy(update={"api_token": "s3cret"})
    token = {"Authorization": "Bearer s3cret"}
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with live_server(secured) as (host, port):
        base = f"http://{host}:{port}"
        form = convert_form(checkpoint)
        assert httpx.post(f"{base}/convert", headers=token, timeout=120, **form).status_code == 201
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
             f"{base}/openapi.json", "--checks", "all", "--max-examples", "50", "--seed", "20261202",
             "--header", f"Authorization: {token['Authorization']}", "--no-color"],
            capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
        )  # fmt: skip
        metrics = httpx.get(f"{base}/metrics").text
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    server_errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("reparam_http_requests_total") and 'status="5' in line
    ]
    assert server_errors == []
