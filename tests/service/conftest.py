"""Service fixtures: an app on a temporary data folder with the in-process backend, a checkpoint,
the same app behind a real uvicorn server on loopback (for what a test client cannot show);
TorchServe workers and service subprocesses import this checkout. Tests marked ``databases`` run
twice: on SQLite and on a throwaway PostgreSQL server (skipped with one reason without one)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.main import server_config
from tests.helpers import ROOT, make_checkpoint
from tests.servers import NO_POSTGRES, SKIPPED_POSTGRES, PostgresServer, postgres_bindir, s3_server


@pytest.fixture(autouse=True)
def subprocesses_import_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchServe's workers are processes of their own (started with the environment's Python):
    without this they could import an installed copy of reparam_core and service."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("databases") and "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Every PostgreSQL case skipped for the same reason reads as one line of the summary (pytest
    would name each test's location, one line per test)."""
    report: pytest.TestReport = yield
    if report.skipped and isinstance(report.longrepr, tuple) and SKIPPED_POSTGRES in report.longrepr[2]:
        report.longrepr = (__file__, None, report.longrepr[2])  # type: ignore[assignment]
    return report


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(NO_POSTGRES)
    try:
        server = PostgresServer(bindir)
    except KeyError:
        pytest.skip(f"{SKIPPED_POSTGRES}: running as root, and no postgres user to run the server as")
    yield server
    server.stop()


@pytest.fixture()
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The metadata database: SQLite in the data folder, or (``databases`` tests' second run) a fresh
    database on the PostgreSQL server."""
    if getattr(request, "param", "sqlite") == "sqlite":
        (tmp_path / "data").mkdir(exist_ok=True)
        yield f"sqlite:///{(tmp_path / 'data' / 'reparam.db').resolve()}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture()
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        backend="inprocess",
        device="cpu",
        export_program=False,
    )


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "tiny.pth")


@contextlib.contextmanager
def _serving(settings: Settings) -> Iterator[tuple[str, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(server_config(settings.model_copy(update={"host": "127.0.0.1", "port": port})))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture()
def live_server() -> Callable[[Settings], contextlib.AbstractContextManager[tuple[str, int]]]:
    """``with live_server(settings) as (host, port):`` the app served by uvicorn on loopback."""
    return _serving


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture()
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket; boto3 reaches the server through the standard AWS variables."""
    for variable, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3  # loaded by the tests that use S3 only

    name = f"reparam-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@dataclasses.dataclass(frozen=True)
class Held:
    """A conversion held in its worker: ``inside`` is set once it is there, it goes on at ``release``."""

    inside: threading.Event
    release: threading.Event


@pytest.fixture()
def held_conversion(monkeypatch: pytest.MonkeyPatch) -> Held:
    """Every conversion waits inside its worker until the test releases it (30 s at most)."""
    from reparam_core import convert

    held = Held(threading.Event(), threading.Event())

    def held_convert(*args: Any, **kwargs: Any) -> Any:
        held.inside.set()
        held.release.wait(timeout=30)
        return convert(*args, **kwargs)

    monkeypatch.setattr("service.jobs.conversions.convert", held_convert)
    return held
