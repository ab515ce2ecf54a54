"""docker/: the compose file, Dockerfiles, load balancer and monitoring config stay consistent with
each other and with the service's settings (no Docker engine in CI: every check is offline)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from service.config import Settings
from service.store.s3 import parse_s3_url

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
REPLICAS = ["reparam-a", "reparam-b"]
ONE_SHOT = {"minio-bucket"}
HAPROXY_CFG = DOCKER / "haproxy/haproxy.cfg"


def interpolated(value: Any) -> Any:
    """``value`` as compose hands it to a container with no variable set: ``${VAR:-default}`` is
    its default, ``${VAR}`` empty, ``$$`` a literal ``$``."""
    if isinstance(value, dict):
        return {key: interpolated(item) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolated(item) for item in value]
    if not isinstance(value, str):
        return value
    parts = re.split(r"(\$\$)", value)
    substitute = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
    return "".join(
        "$" if part == "$$" else substitute.sub(lambda m: m.group(2) or "", part) for part in parts
    )


def environment(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in interpolated(SERVICES[service].get("environment", {})).items()}


def mounts(service: str) -> dict[str, str]:
    """Source (volume name or relative path) -> path in the container."""
    return {v.split(":")[0]: v.split(":")[1] for v in SERVICES[service].get("volumes", [])}


def torchserve_config() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (DOCKER / "torchserve/config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )


def haproxy_config() -> dict[str, list[str]]:
    """Section header ("backend replicas") -> its lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.strip())
    return sections


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 0.001}[unit]


def test_compose_services_and_volumes() -> None:
    assert set(SERVICES) == {
        "lb",
        *REPLICAS,
        "postgres",
        "minio",
        "minio-bucket",
        "torchserve",
        "prometheus",
        "grafana",
    }
    published = {name for name, service in SERVICES.items() if "ports" in service}
    assert published == {"lb", "prometheus", "grafana"}  # database, bucket, TorchServe stay private
    assert SERVICES["lb"]["ports"] == ["8000:8000"]  # the port the README's examples use
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name}: {source}"
    for replica in REPLICAS:  # stateless: nothing of a replica's own survives it but the model store
        assert set(mounts(replica)) == {"model-store"}


def test_replicas_are_identical_and_their_settings_exist() -> None:
    first, *others = (interpolated(SERVICES[name]) for name in REPLICAS)
    assert all(other == first for other in others)
    env = environment(REPLICAS[0])
    fields = Settings.model_fields
    for key in env:  # Settings ignores unknown variables: a misspelt one would do nothing
        if key.startswith("REPARAM_"):
            assert key.removeprefix("REPARAM_").lower() in fields, f"{key} is not a setting"
    settings = Settings(
        **{
            key.removeprefix("REPARAM_").lower(): value
            for key, value in env.items()
            if key.startswith("REPARAM_")
        }
    )  # validates them, the s3:// URL's pattern included
    assert settings.warm_versions == "all"  # replicas would unload each other's workers otherwise
    assert settings.workers_per_model is not None  # not the replica container's core count
    assert settings.migrate_at_start


def test_replicas_share_the_database() -> None:
    env, postgres = environment(REPLICAS[0]), environment("postgres")
    url = urlparse(env["REPARAM_DATABASE_URL"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert url.scheme == "postgresql+psycopg" and '"psycopg[binary]==' in pyproject
    assert url.hostname == "postgres" and url.port == 5432
    assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    assert url.path == "/" + postgres["POSTGRES_DB"]
    for replica in REPLICAS:
        assert SERVICES[replica]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_replicas_share_the_bucket_which_compose_creates() -> None:
    env, minio, bucket_job = environment(REPLICAS[0]), environment("minio"), environment("minio-bucket")
    bucket, prefix = parse_s3_url(env["REPARAM_ARTIFACTS_URL"])
    assert bucket == bucket_job["S3_BUCKET"] and prefix
    assert urlparse(env["AWS_ENDPOINT_URL"]).hostname == "minio"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses to start with less
    assert (bucket_job["MINIO_ROOT_USER"], bucket_job["MINIO_ROOT_PASSWORD"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    script = " ".join(interpolated(SERVICES["minio-bucket"]["command"]))
    assert "mc mb --ignore-existing" in script and '"local/$S3_BUCKET"' in script  # a rerun succeeds
    assert "http://minio:9000" in script and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert SERVICES["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for replica in REPLICAS:  # the service refuses to start without its bucket
        assert (
            SERVICES[replica]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
        )


def test_replicas_share_torchserve_and_its_model_store() -> None:
    env, config = environment(REPLICAS[0]), torchserve_config()
    for setting, address in [
        ("REPARAM_TORCHSERVE_URL", "inference_address"),
        ("REPARAM_TORCHSERVE_MANAGEMENT_URL", "management_address"),
    ]:
        url = urlparse(env[setting])
        assert url.hostname == "torchserve" and url.port == urlparse(config[address]).port, setting
    store = env["REPARAM_TORCHSERVE_MODEL_STORE"]
    assert config["model_store"] == store
    for service in [*REPLICAS, "torchserve"]:  # a replica writes a model folder, TorchServe loads it
        assert mounts(service)["model-store"] == store, service
    for replica in REPLICAS:
        assert SERVICES[replica]["depends_on"]["torchserve"]["condition"] == "service_healthy"


def test_load_balancer_spreads_over_both_replicas() -> None:
    sections = haproxy_config()
    backend = sections["backend replicas"]
    servers = {line.split()[2] for line in backend if line.startswith("server ")}
    assert servers == {f"{replica}:8000" for replica in REPLICAS}
    assert all(SERVICES[replica]["expose"] == ["8000"] for replica in REPLICAS)
    assert set(SERVICES["lb"]["depends_on"]) == set(REPLICAS)
    check = next(line for line in backend if line.startswith("option httpchk"))
    assert check.split()[2:] == ["GET", "/healthz"]
    assert '@router.get("/healthz"' in (ROOT / "service/routes/health.py").read_text()
    assert any(line.startswith("default-server check ") for line in backend)  # every server checked
    assert "bind :8000" in sections["frontend reparam"]  # what compose publishes
    defaults = {
        line.split()[1]: line.split()[2] for line in sections["defaults"] if line.startswith("timeout ")
    }
    # POST /convert is silent while it converts and TorchServe starts the version's workers
    startup = Settings.model_fields["model_startup_timeout_s"].default
    server, client = seconds(defaults["server"]), seconds(defaults["client"])
    assert server > startup + 60 and client >= server
    assert seconds(defaults["http-request"]) <= Settings.model_fields["header_timeout_s"].default
    assert not any(
        "maxsize" in line or "http-buffer-request" in line for lines in sections.values() for line in lines
    )
    health = SERVICES["lb"]["healthcheck"]["test"][-1]
    port, path = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\S+)", health).groups()  # type: ignore[union-attr]
    assert {f"bind :{port}", f"monitor-uri {path}"} <= set(sections["frontend health"])


def test_haproxy_accepts_its_configuration() -> None:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy not installed (Debian's package provides it)")
    result = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr  # warnings only: the replicas' names resolve in compose


def health_checked(name: str) -> bool:
    """A healthcheck in compose, or a HEALTHCHECK in the image it builds."""
    service = SERVICES[name]
    if "healthcheck" in service:
        return True
    build = service.get("build")
    return (
        build is not None and "HEALTHCHECK " in (DOCKER / build["context"] / build["dockerfile"]).read_text()
    )


def test_every_long_running_service_is_health_checked() -> None:
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        assert health_checked(name), f"{name} has no health check"
        depends_on = service.get("depends_on", {})
        for dependency, condition in depends_on.items() if isinstance(depends_on, dict) else []:
            if condition["condition"] == "service_healthy":
                assert health_checked(dependency), f"{name} waits for {dependency} to be healthy"


@pytest.mark.parametrize("name", ["reparam-a", "torchserve"])
def test_dockerfiles_copy_what_exists(name: str) -> None:
    build = SERVICES[name]["build"]
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
    config = torchserve_config()
    assert config["allowed_urls"].startswith("file:///model-store/")
    assert config["metrics_mode"] == "prometheus" and config["enable_model_api"] == "true"
    env = dict(
        line.split("=", 1)
        for line in re.findall(r"(REPARAM_TORCHSERVE_\w+=\S+)", (DOCKER / "Dockerfile").read_text())
    )
    assert env["REPARAM_TORCHSERVE_URL"].endswith(":" + config["inference_address"].rsplit(":", 1)[1])


def test_monitoring_targets_and_dashboard_metrics() -> None:
    prometheus = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
        for job in prometheus["scrape_configs"]
    }
    metrics_port = urlparse(torchserve_config()["metrics_address"]).port
    assert targets == {
        "reparam": {f"{r}:8000" for r in REPLICAS},
        "torchserve": {f"torchserve:{metrics_port}"},
    }
    dashboard = json.loads((DOCKER / "grafana/dashboards/reparam.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    metrics_source = (ROOT / "service/metrics.py").read_text()
    for metric in set(re.findall(r"reparam_[a-z_]+", exprs)):
        base = re.sub(r"_(bucket|count|sum)$", "", metric)
        assert f'"{base}"' in metrics_source, f"dashboard uses unknown metric {metric}"
    assert "histogram_quantile(0.99" in exprs
    for quantile in re.findall(r"histogram_quantile\([^,]+, (\w+)", exprs):  # across the replicas
        assert quantile == "sum"


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
