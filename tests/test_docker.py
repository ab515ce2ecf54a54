"""docker/: the compose file, Dockerfiles and monitoring config stay consistent (no Docker engine in CI)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services_and_volumes() -> None:
    assert set(COMPOSE["services"]) == {"reparam", "torchserve", "prometheus", "grafana"}
    assert COMPOSE["services"]["reparam"]["depends_on"]["torchserve"]["condition"] == "service_healthy"
    assert "ports" not in COMPOSE["services"]["torchserve"]  # management API never published
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), source
            else:
                assert source in COMPOSE["volumes"], source


@pytest.mark.parametrize("name", ["reparam", "torchserve"])
def test_dockerfiles_copy_what_exists(name: str) -> None:
    build = COMPOSE["services"][name]["build"]
    context = (DOCKER / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    text = dockerfile.read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for source in line.split()[:-1]:
            assert (context / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
    assert "torch==" not in text or "2.14.1" in text
    assert Path(f"{dockerfile}.dockerignore").exists()  # the context is the repo root: .venv must stay out
    assert re.search(r"^USER ", text, flags=re.M), "containers must not run as root"


def test_torchserve_config_is_locked_down() -> None:
    config = dict(
        line.split("=", 1)
        for line in (DOCKER / "torchserve/config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert config["allowed_urls"].startswith("file:///model-store/")
    assert config["metrics_mode"] == "prometheus" and config["enable_model_api"] == "true"
    env = dict(
        line.split("=", 1)
        for line in re.findall(r"(REPARAM_TORCHSERVE_\w+=\S+)", (DOCKER / "Dockerfile").read_text())
    )
    assert env["REPARAM_TORCHSERVE_URL"].endswith(":" + config["inference_address"].rsplit(":", 1)[1])


def test_monitoring_targets_and_dashboard_metrics() -> None:
    prometheus = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"reparam:8000", "torchserve:8082"}
    dashboard = json.loads((DOCKER / "grafana/dashboards/reparam.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    metrics_source = (ROOT / "service/metrics.py").read_text()
    for metric in set(re.findall(r"reparam_[a-z_]+", exprs)):
        base = re.sub(r"_(bucket|count|sum)$", "", metric)
        assert f'"{base}"' in metrics_source, f"dashboard uses unknown metric {metric}"
    assert "histogram_quantile(0.99" in exprs


def test_compose_config_validates_with_docker_compose() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (.ci/run installs Debian's package)")
    result = subprocess.run(
        [binary, "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=DOCKER,
    )
    assert result.returncode == 0, result.stderr
