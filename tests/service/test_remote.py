"""``reparam remote`` against a live service: its exit codes (0 done, 1 gate failed, 2 refused,
3 service failed or unreachable), and a CI job's sequence run as a CI job runs it, in a subprocess:
convert, promote to production, predict by alias, roll back, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reparam_core.cli import main
from service.config import Settings
from tests.helpers import SERVICE_SPEC, make_checkpoint, png_bytes


def _remote(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = main(["remote", *args, "--url", url, "--token", "s3cret"])
    captured = capsys.readouterr()
    out = "\n".join(line for line in captured.out.splitlines() if not line.startswith("INFO:"))  # uvicorn's
    return code, out, captured.err


def test_exit_codes(
    settings: Settings, checkpoint: Path, tmp_path: Path, live_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, image = tmp_path / "spec.json", tmp_path / "cat.png"
    spec.write_text(json.dumps(SERVICE_SPEC))
    image.write_bytes(png_bytes())
    with live_server(settings.model_copy(update={"api_token": "s3cret"})) as (host, port):
        url = f"http://{host}:{port}"
        code, out, _ = _remote(capsys, url, "convert", str(checkpoint), "--spec", str(spec), "--name", "tiny",
                               "--alias", "production")  # fmt: skip
        assert code == 0 and "tiny v1 stored" in out and "production -> v1 (new" in out
        other = tmp_path / "other.png"
        other.write_bytes(png_bytes(40, 56, seed=7))
        code, out, _ = _remote(
            capsys, url, "predict", "tiny", str(image), str(other), "--version", "production", "--json"
        )  # one request, one batch, answered per image in order
        answers = json.loads(out)
        assert code == 0 and [a["version"] for a in answers] == [1, 1]
        for path, answer in zip((image, other), answers, strict=True):
            alone = json.loads(_remote(capsys, url, "predict", "tiny", str(path), "--json")[1])[0]
            assert [p["index"] for p in answer["predictions"][0]] == [
                p["index"] for p in alone["predictions"][0]
            ]
        assert _remote(capsys, url, "models", "tiny")[1].strip() == "tiny: v1 (latest v1); production -> v1"

        code, out, err = _remote(capsys, url, "convert", str(checkpoint), "--spec", str(spec),
                                 "--name", "strict", "--tolerance", "1e-30", "--json")  # fmt: skip
        assert code == 1 and "report" in json.loads(out) and "422" in err  # the gate failed

        assert _remote(capsys, url, "alias", "tiny", "production", "9")[0] == 2  # no version 9
        assert _remote(capsys, url, "delete", "tiny", "--version", "1")[0] == 2  # 409: aliased
        assert _remote(capsys, url, "predict", "nope", str(image))[0] == 2
        assert _remote(capsys, url, "predict", "tiny", str(tmp_path / "missing.png"))[0] == 2
        assert _remote(capsys, url, "alias", "tiny", "production")[0] == 2  # neither version nor --delete
        assert main(["remote", "models", "--url", url, "--token", "wrong"]) == 0  # reads need no token
        assert main(["remote", "delete", "tiny", "--url", url, "--token", "wrong"]) == 2  # 401

        assert _remote(capsys, url, "alias", "tiny", "production", "--delete")[0] == 0
        assert _remote(capsys, url, "delete", "tiny")[0] == 0
        assert _remote(capsys, url, "models", "tiny")[0] == 2
    code, _, err = _remote(capsys, url, "models")
    assert code == 3 and "reparam remote:" in err  # the service is gone


CI_JOB = """
set -e
reparam remote convert v1.pth --spec spec.json --name demo --alias production
reparam remote convert v2.pth --spec spec.json --name demo --alias staging
reparam remote predict demo cat.png --version staging
reparam remote alias demo production 2
test "$(reparam remote predict demo cat.png --version production --json | python -c \
  'import json, sys; print(json.load(sys.stdin)[0]["version"])')" = 2
reparam remote alias demo production 1   # roll back
reparam remote models demo
reparam remote delete demo
if reparam remote models demo; then exit 9; fi
"""


def test_a_ci_job_drives_the_service(settings: Settings, tmp_path: Path, live_server: Any) -> None:
    (tmp_path / "spec.json").write_text(json.dumps(SERVICE_SPEC))
    make_checkpoint(tmp_path / "v1.pth")
    make_checkpoint(tmp_path / "v2.pth", seed=1)
    (tmp_path / "cat.png").write_bytes(png_bytes())
    with live_server(settings.model_copy(update={"api_token": "s3cret"})) as (host, port):
        env = {**os.environ, "REPARAM_URL": f"http://{host}:{port}", "REPARAM_API_TOKEN": "s3cret"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        job = subprocess.run(["bash", "-c", CI_JOB], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300, check=False)  # fmt: skip
    assert job.returncode == 0, job.stdout + job.stderr
    assert "demo: production -> v1 (was v2; by token:" in job.stdout
    assert "demo: v1, v2 (latest v2); production -> v1, staging -> v2" in job.stdout
    assert "deleted model demo" in job.stdout
