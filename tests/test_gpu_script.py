"""benchmarks/gpu.sh without a GPU: its Python parts import and parse their arguments (--check),
and a real run stops at once, saying why, instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=environment
    )


def test_check_imports_every_stage_and_parses_its_arguments() -> None:
    result = run("--check")
    assert result.returncode == 0, result.stderr
    for script in ("convert_bench", "inference_bench", "serve_bench", "gpu_summary"):
        assert f"{script}: {{" in result.stdout
    assert "'device': 'cuda'" in result.stdout and "gpu.sh --check: ok" in result.stdout


def test_without_a_cuda_device_it_fails_fast_and_says_so() -> None:
    result = run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr
    assert "gpu.sh: convert" not in result.stdout  # no stage started


def test_unknown_arguments_are_refused() -> None:
    result = run("--fast")
    assert result.returncode == 64 and "unknown argument: --fast" in result.stderr
