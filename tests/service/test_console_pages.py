"""The web console's pages (``service/ui``), read without a browser: each page shows the API's own
values (``data-value`` attributes hold them exactly, the text their rounded form), reads stay public
with a token set, and unknown things answer 404 pages."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.ui.views import checks, quantization_facts, sci, size, when
from tests.helpers import convert_form, make_checkpoint, png_bytes, ready, wait_for

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Elements(HTMLParser):
    """Every element's attributes with its text (void elements have none)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None], list[str]]] = []
        self._open: list[list[str]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.found.append((tag, dict(attrs), text))
        if tag not in VOID:
            self._open.append(text)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for text in self._open:
            text.append(data)

    def having(self, name: str, value: str | None = None) -> list[tuple[dict[str, str | None], str]]:
        return [
            (attrs, " ".join(" ".join(text).split()))
            for _, attrs, text in self.found
            if name in attrs and (value is None or attrs[name] == value)
        ]


def _page(client: TestClient, url: str) -> Elements:
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return Elements(response.text)


def _api_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's checks in the order the page lists them."""
    serving = report["serving"]
    named = [report["fp32"], report["fp32_train"], report["stored_weights"]]
    named += [serving["equivalence"], serving["train_same_precision"]]
    return [*report["fp64"], *named, *(c for c in (report["reference"], report["onnx"]) if c)]


def test_root_links_the_console(client: TestClient) -> None:
    assert client.get("/").json()["links"]["console"] == "/ui"
    assert "/ui" not in str(client.get("/openapi.json").json()["paths"])  # pages, not API


def test_models_page_lists_versions_aliases_and_sizes(
    client: TestClient, checkpoint: Path, tmp_path: Path, settings: Settings
) -> None:
    assert "No model yet" in client.get("/ui").text
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    second = make_checkpoint(tmp_path / "second.pth", seed=1)
    form = convert_form(second)
    form["data"]["serving"] = '{"channels_last": false}'
    assert client.post("/convert", **form).status_code == 201
    assert client.put("/models/tiny/aliases/production", json={"version": 1}).status_code == 200

    api = client.get("/models").json()[0]
    page = _page(client, "/ui")
    assert [a for a, _ in page.having("data-model", "tiny")]
    rows = {attrs["data-version"]: text for attrs, text in page.having("data-version") if "href" not in attrs}
    for v in api["versions"]:
        row = rows[str(v["version"])]
        weights = (
            settings.resolved_artifacts_dir / "sha256" / v["digest"][:2] / v["digest"] / "model.safetensors"
        )
        assert f"v{v['version']}" in row and v["arch"] in row and when(v["created_at"]) in row
        assert f"{v['serving']['runtime']} / {v['serving']['precision']}" in row
        assert size(weights.stat().st_size) in row
    links = [attrs["href"] for attrs, _ in page.having("href") if "/ui/models/" in (attrs["href"] or "")]
    assert links == ["/ui/models/tiny/versions/2", "/ui/models/tiny/versions/1"]  # newest first
    (alias,) = page.having("data-alias")
    assert alias[0]["data-version"] == str(api["aliases"]["production"]["version"]) == "1"
    assert alias[1] == "production → v1"
    assert "production" in rows["1"] and "production" not in rows["2"]


def test_version_page_shows_the_report_timings_and_artifacts(client: TestClient, checkpoint: Path) -> None:
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    api = client.get("/models/tiny/versions/1").json()
    wait_for(lambda: ready(client, api["artifacts"]["model.onnx"], waiting=(503,)))  # exported after
    report = api["report"]
    html = client.get("/ui/models/tiny/versions/1").text
    page = _page(client, "/ui/models/tiny/versions/1")

    expected = _api_checks(report)
    for key in ("max_rel_error", "rel_l2_error", "tolerance", "top1_agreement"):
        cells = page.having("data-key", key)
        assert [a["data-value"] for a, _ in cells] == [str(c.get(key)) for c in expected], key
        assert [t for _, t in cells if key in ("max_rel_error", "rel_l2_error")] in (
            [sci(c.get(key)) for c in expected],
            [],
        )
    passed = page.having("data-key", "passed")
    assert [a["data-value"] for a, _ in passed] == [str(c["passed"]).lower() for c in expected]
    assert all(text.startswith("✓ pass") for _, text in passed)
    assert page.having("id", "verdict")[0][1] == "proven equivalent"
    for field in ("params_train", "params_deploy", "convs_train", "convs_deploy"):
        assert page.having("id", field.replace("_", "-"))[0][1] == str(report[field])

    stages = page.having("data-stage")
    assert [(a["data-stage"], float(a["data-seconds"] or "nan")) for a, _ in stages] == list(
        api["timings"].items()
    )
    hrefs = {attrs["href"] for attrs, _ in page.having("download")}
    stored = {url for url in api["artifacts"].values() if client.get(url).status_code == 200}
    assert hrefs == stored and len(stored) >= 3
    assert "model.pt2" not in api["artifacts"] and "model.pt2" not in html  # not exported by these settings
    assert "quantization" not in report and 'id="quantization"' not in html  # no section without one


def test_checks_include_a_quantization_report_when_present() -> None:
    entry = {"where": None, "dtype": "int8", "input_shape": [2, 3, 8, 8], "max_rel_error": 0.01,
             "rel_l2_error": 0.008, "tolerance": 0.05, "top1_agreement": 1.0, "passed": True}  # fmt: skip
    report: dict[str, Any] = {"fp64": [], "fp32": None, "fp32_train": None, "passed": True}
    assert checks(report) == []  # absent: no row, no failure
    report["quantization"] = {"scheme": "per-channel", "calibration_images": 32, "int8": entry}
    (row,) = checks(report)
    assert (row.name, row.dtype, row.max_rel_error, row.passed) == ("quantization: int8", "int8", 0.01, True)
    assert quantization_facts(report["quantization"]) == [
        ("scheme", "per-channel"),
        ("calibration_images", "32"),
    ]


def test_latency_and_predict_pages(client: TestClient, checkpoint: Path) -> None:
    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    assert "No prediction yet" in client.get("/ui/latency").text
    for seed in range(3):
        answer = client.post(
            "/predict/tiny", content=png_bytes(seed=seed), headers={"Content-Type": "image/png"}
        )
        assert answer.status_code == 200
    gif = client.post("/predict/tiny", content=b"GIF89a", headers={"Content-Type": "image/png"})
    assert gif.status_code == 415

    page = _page(client, "/ui/latency")
    (row,) = page.having("data-model", "tiny")
    assert row[0]["data-version"] == "1" and row[1].split()[:3] == ["tiny", "v1", "3"]
    statuses = {a["data-status"]: t for a, t in page.having("data-status")}
    assert statuses["415"] == "415: 1" and statuses["200"].startswith("200: ")
    assert any("POST /predict/{name}" in t for _, t in page.having("scope", "row"))
    assert page.having("role", "img")  # the chart of tiny v1 (the last interval ends now)

    predict = _page(client, "/ui/predict?model=tiny&version=1")
    options = [(a["value"], "selected" in a) for a, _ in predict.having("value") if "data-model" in a]
    assert options == [("1", True)]
    assert predict.having("id", "image")[0][0]["accept"] == "image/png,image/jpeg,image/webp"


def test_reads_stay_public_with_a_token(tmp_path: Path, checkpoint: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        backend="inprocess",
        device="cpu",
        export_program=False,
        api_token="s3cret",
    )
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": "Bearer s3cret"}
        assert client.post("/convert", headers=auth, **convert_form(checkpoint)).status_code == 201
        for url in (
            "/ui",
            "/ui/models/tiny/versions/1",
            "/ui/latency",
            "/ui/predict",
            "/ui/static/console.js",
        ):
            assert client.get(url).status_code == 200, url
        page = Elements(client.get("/ui/models/tiny/versions/1").text)
        assert all("data-needs-token" in attrs for attrs, _ in page.having("download"))
        assert client.put("/models/tiny/aliases/x", json={"version": 1}).status_code == 401  # the API's rule


def test_unknown_pages_and_files(client: TestClient, checkpoint: Path) -> None:
    missing = client.get("/ui/models/tiny/versions/3")
    assert missing.status_code == 404 and "no version 3 of model" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    assert client.get("/ui/models/no%20such/versions/1").status_code == 422
    assert client.get("/ui/models/tiny/versions/0").status_code == 422
    assert client.get("/ui/static/..%2Fpages.py").status_code == 404
    assert client.get("/ui/static/console.css").headers["content-type"].startswith("text/css")


def test_every_console_file_ships_in_the_package() -> None:
    """The templates and static files are package data: a wheel without them serves no page."""
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [
        path.relative_to(root / "service").as_posix()
        for path in (root / "service" / "ui").rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"}
    ]
    assert len(files) >= 8
    assert [f for f in files if not any(fnmatch(f, glob) for glob in globs["service"])] == []


def test_a_quantization_report_gets_its_section_and_rows(
    client: TestClient, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version whose report has ``quantization`` (INT8 versions): its fields and checks are shown."""
    from service.ui import pages

    assert client.post("/convert", **convert_form(checkpoint)).status_code == 201
    int8 = {"where": None, "dtype": "int8", "input_shape": [2, 3, 32, 32], "max_rel_error": 0.0123,
            "rel_l2_error": 0.0089, "tolerance": 0.05, "top1_agreement": 0.5, "passed": False}  # fmt: skip
    original = pages.get_version

    async def with_quantization(*args: Any) -> dict[str, Any]:
        detail = await original(*args)
        detail["report"]["quantization"] = {"scheme": "per-channel", "calibration_images": 16, "int8": int8}
        return detail

    monkeypatch.setattr(pages, "get_version", with_quantization)
    html = client.get("/ui/models/tiny/versions/1").text
    page = Elements(html)
    assert 'id="quantization"' in html and "per-channel" in html
    last = [text for _, text in page.having("data-key", "max_rel_error")][-1]
    assert last == sci(0.0123) == "0.0123"
    assert [a["data-value"] for a, _ in page.having("data-key", "passed")][-1] == "false"
    assert [t for _, t in page.having("data-key", "passed")][-1] == "✗ fail"
    assert [t for _, t in page.having("data-key", "top1_agreement")][-1] == "50%"
