"""The token: checked before an upload is read, on every mutation and (by default) on downloads."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.helpers import convert_form, wait_for

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture()
def secured(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_token": "s3cret"})


def test_mutations_downloads_and_jobs_need_the_token(secured: Settings, checkpoint: Path) -> None:
    with TestClient(create_app(secured)) as client:
        assert client.post("/convert", **convert_form(checkpoint)).status_code == 401
        wrong = client.post("/convert", headers={"Authorization": "Bearer nope"}, **convert_form(checkpoint))
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        accepted = client.post("/convert?wait=false", headers=TOKEN, **convert_form(checkpoint))
        job = accepted.json()["status_url"]
        assert client.get(job).status_code == 401
        done = wait_for(lambda: client.get(job, headers=TOKEN).json()["status"] == "succeeded" or None)
        assert done
        weights = "/models/tiny/versions/1/artifacts/model.safetensors"
        assert client.get(weights).status_code == 401
        assert client.delete("/models/tiny/versions/1").status_code == 401
        assert client.get("/models/tiny").status_code == 200  # the registry itself stays readable
        security = client.get("/openapi.json").json()["paths"]["/convert"]["post"]["security"]
        assert security == [{"HTTPBearer": []}]


def test_downloads_can_be_made_public(secured: Settings, checkpoint: Path) -> None:
    public = secured.model_copy(update={"public_downloads": True})
    with TestClient(create_app(public)) as client:
        assert client.post("/convert", headers=TOKEN, **convert_form(checkpoint)).status_code == 201
        assert client.get("/models/tiny/versions/1/artifacts/model.safetensors").status_code == 200
        assert client.delete("/models/tiny/versions/1").status_code == 401


def test_a_stranger_is_refused_before_the_upload_is_read(secured: Settings, live_server: Any) -> None:
    """A 1 GB upload announced without the token is answered 401 after its headers alone."""
    with live_server(secured) as address, socket.create_connection(address, timeout=10) as connection:
        connection.sendall(
            b"POST /convert HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\n\r\n--b\r\n"
        )
        started = time.monotonic()
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 5
