"""Aliases (set, move, history with who and when, predict by alias, the default alias, refusals)
and the deletion of a whole model (versions, aliases, artifacts; the numbering continues)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.helpers import convert_form, make_checkpoint, png_bytes


def _two_versions(client: TestClient, checkpoint: Path, tmp_path: Path) -> None:
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    second = make_checkpoint(tmp_path / "second.pth", seed=1)
    assert client.post("/convert", **convert_form(second)).json()["version"] == 2


def _served(client: TestClient, query: str = "") -> int:
    response = client.post(
        f"/predict/tiny{query}", content=png_bytes(), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


@pytest.mark.databases
def test_set_move_history_and_predict_by_alias(client: TestClient, checkpoint: Path, tmp_path: Path) -> None:
    _two_versions(client, checkpoint, tmp_path)
    put = client.put("/models/tiny/aliases/production", json={"version": 1})
    assert put.status_code == 200
    assert put.json() | {"moved_at": None} == {
        "model": "tiny", "alias": "production", "version": 1, "previous": None,
        "moved_by": "anonymous", "moved_at": None,
    }  # fmt: skip
    assert _served(client, "?version=production") == 1
    assert _served(client) == 2  # no `default` alias: the latest

    moved = client.put(
        "/models/tiny/aliases/production", json={"version": 2}, headers={"X-Reparam-Actor": "ci"}
    )
    assert moved.json()["previous"] == 1 and moved.json()["moved_by"] == "ci (anonymous)"
    assert _served(client, "?version=production") == 2  # the cache forgot the old target at once
    assert client.put("/models/tiny/aliases/production", json={"version": 2}).json()["previous"] == 2

    model = client.get("/models/tiny").json()
    assert (
        model["aliases"]["production"]["version"] == 2
        and model["aliases"]["production"]["moved_by"] == "ci (anonymous)"
    )
    assert client.get("/models").json()[0]["aliases"] == model["aliases"]
    history = client.get("/models/tiny/aliases/production/history").json()
    assert [(m["from"], m["to"], m["moved_by"]) for m in history] == [
        (None, 1, "anonymous"),
        (1, 2, "ci (anonymous)"),
    ]
    assert all(m["moved_at"] for m in history)

    assert client.delete("/models/tiny/aliases/production").status_code == 204
    assert client.get("/models/tiny").json()["aliases"] == {}
    assert client.get("/models/tiny/aliases/production/history").json()[-1]["to"] is None
    assert client.post("/predict/tiny?version=production", content=png_bytes(),
                       headers={"Content-Type": "image/png"}).status_code == 404  # fmt: skip
    assert client.delete("/models/tiny/aliases/production").status_code == 404
    assert client.get("/models/tiny/aliases/staging/history").status_code == 404


@pytest.mark.databases
def test_default_alias_is_what_predict_serves(client: TestClient, checkpoint: Path, tmp_path: Path) -> None:
    _two_versions(client, checkpoint, tmp_path)
    assert client.put("/models/tiny/aliases/default", json={"version": 1}).status_code == 200
    assert _served(client) == 1
    assert _served(client, "?version=2") == 2
    assert client.delete("/models/tiny/aliases/default").status_code == 204
    assert _served(client) == 2


@pytest.mark.databases
def test_refusals(client: TestClient, checkpoint: Path) -> None:
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    assert client.put("/models/tiny/aliases/production", json={"version": 7}).status_code == 404
    assert client.put("/models/nope/aliases/production", json={"version": 1}).status_code == 404
    assert client.put("/models/tiny/aliases/42", json={"version": 1}).status_code == 422  # a number
    assert client.put("/models/tiny/aliases/prod", json={"version": "x"}).status_code == 422
    assert client.get("/predict/tiny?version=99999999999&image=x").status_code == 422
    assert client.get("/predict/tiny?version=9999999999&image=x").status_code == 422  # over 2^31-1
    assert client.put("/models/tiny/aliases/prod", json={"version": 1}).status_code == 200
    refused = client.delete("/models/tiny/versions/1")
    assert refused.status_code == 409 and "prod" in refused.json()["detail"]
    assert _served(client, "?version=prod") == 1  # still served
    assert client.delete("/models/tiny/aliases/prod").status_code == 204
    assert client.delete("/models/tiny/versions/1").status_code == 204


def test_who_is_the_token_fingerprint(settings: Settings, checkpoint: Path) -> None:
    token = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(settings.model_copy(update={"api_token": "s3cret"}))) as client:
        assert client.post("/convert", headers=token, **convert_form(checkpoint)).status_code == 201
        assert client.put("/models/tiny/aliases/production", json={"version": 1}).status_code == 401
        assert client.delete("/models/tiny/aliases/production").status_code == 401
        assert client.delete("/models/tiny").status_code == 401
        moved = client.put("/models/tiny/aliases/production", json={"version": 1}, headers=token)
        fingerprint = "token:" + hashlib.sha256(b"s3cret").hexdigest()[:8]
        assert moved.json()["moved_by"] == fingerprint
        claimed = client.put(  # a name the caller gives is recorded, but never instead of the token
            "/models/tiny/aliases/staging",
            json={"version": 1},
            headers={**token, "X-Reparam-Actor": "admin"},
        )
        assert claimed.json()["moved_by"] == f"admin ({fingerprint})"


@pytest.mark.databases
def test_delete_model_removes_versions_aliases_artifacts_and_keeps_numbering(
    client: TestClient, checkpoint: Path, tmp_path: Path, settings: Settings
) -> None:
    _two_versions(client, checkpoint, tmp_path)
    assert client.put("/models/tiny/aliases/production", json={"version": 1}).status_code == 200
    digests = [v["digest"] for v in client.get("/models/tiny").json()["versions"]]
    folders = [settings.resolved_artifacts_dir / "sha256" / d[:2] / d for d in digests]
    assert all(folder.exists() for folder in folders)

    deleted = client.delete("/models/tiny", headers={"X-Reparam-Actor": "cleanup"})
    assert deleted.status_code == 204
    assert client.get("/models/tiny").status_code == 404
    assert client.get("/models").json() == []
    assert client.get("/models/tiny/versions/2").status_code == 404
    assert not any(folder.exists() for folder in folders)
    assert client.post("/predict/tiny?version=production", content=png_bytes(),
                       headers={"Content-Type": "image/png"}).status_code == 404  # fmt: skip
    history = client.get("/models/tiny/aliases/production/history").json()
    assert history[-1]["to"] is None and history[-1]["moved_by"] == "cleanup (anonymous)"
    assert client.delete("/models/tiny").status_code == 404

    again = client.post("/convert", **convert_form(checkpoint))
    assert again.status_code == 201 and again.json()["version"] == 3
    assert _served(client) == 3
