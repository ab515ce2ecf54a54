"""Every example in the README and docs/ runs as written: ```bash and ```python blocks, in order,
in a folder prepared by `reparam example --out demo`, against a live `reparam serve` (```console
blocks are the set-up commands, which CI runs itself)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.config import settings_table
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
DEFAULT_URL = "http://127.0.0.1:8000"


def code_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block of ``path``."""
    text = path.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder with the environment the docs assume (``.venv`` as in a checkout)."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def service_url(workspace: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "REPARAM_DATA_DIR": str(workspace / "service-data"),
        "REPARAM_BACKEND": "inprocess",
        "REPARAM_DEVICE": "cpu",
        "REPARAM_EXPORT_PROGRAM": "false",
    }
    env.pop("REPARAM_API_TOKEN", None)
    reparam = Path(sys.executable).parent / "reparam"
    log = (workspace / "service.log").open("w")
    server = subprocess.Popen(
        [str(reparam), "serve", "--port", str(port)], cwd=workspace, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool | None:
        assert server.poll() is None, (workspace / "service.log").read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200 or None
        except httpx.TransportError:
            return None

    try:
        wait_for(ready, timeout=120, interval=0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def run_block(language: str, code: str, cwd: Path, url: str) -> str:
    env = {**os.environ, "REPARAM_URL": url, "REPARAM_API_TOKEN": "", "VIRTUAL_ENV": ""}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if language == "bash":
        command = ["bash", "-eo", "pipefail", "-c", code.replace(DEFAULT_URL, url)]
    else:
        command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{language} block failed:\n{code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_example_runs(doc: Path, workspace: Path, service_url: str) -> None:
    run_block("bash", "reparam example --out demo", workspace, service_url)
    outputs = [
        run_block(language, code, workspace, service_url)
        for _, language, code in code_blocks(doc)
        if language in {"bash", "python"}
    ]
    if doc.name == "README.md":
        assert '"predictions"' in outputs[0] and (workspace / "demo/deploy/model.safetensors").exists()
        assert httpx.get(f"{service_url}/models/demo").status_code == 200


def test_docs_have_examples_and_no_unknown_fences() -> None:
    languages = {language for doc in DOCS for _, language, _ in code_blocks(doc)}
    assert languages <= {"bash", "python", "console", "mermaid", "text"}, languages  # "": untagged
    runnable = {doc.name for doc in DOCS for _, lang, _ in code_blocks(doc) if lang in {"bash", "python"}}
    assert {"README.md", "cli.md", "http-api.md", "library.md"} <= runnable, runnable


def test_readme_is_short_and_has_exactly_two_set_up_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    setup = [code for _, language, code in code_blocks(ROOT / "README.md") if language == "console"]
    assert len(setup) == 2
    assert "'.[service]'" in setup[0] and "reparam serve" in setup[0]
    ci = (ROOT / ".ci/run").read_text()
    assert setup[1].strip().removeprefix("python3 -m venv .venv && ") in ci


def test_configuration_table_is_generated_from_the_settings() -> None:
    assert settings_table() in (ROOT / "docs/operations.md").read_text()


def test_links_between_docs_resolve() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+\.md)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}"
