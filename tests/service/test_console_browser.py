"""The web console in a real headless browser (Debian's ``chromium``, driven by Playwright with
``executable_path``): list -> version page -> the report's values equal the API's -> a photo's top-5
equal /predict's -> an alias moved with the token -> the list shows it. Skipped where Playwright or
a Chromium is missing (``.ci/run`` installs Debian's ``chromium``)."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reparam_core.example import PHOTO
from service.config import Settings
from tests.helpers import SERVICE_SPEC, make_checkpoint

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium on the PATH (apt-get install chromium)")

TOKEN = "console-e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# eight classes: a top-5 is a choice among them
SPEC: dict[str, Any] = {**SERVICE_SPEC, "num_classes": 8, "labels": [f"class-{i}" for i in range(8)]}
# the page's cumulative layout shift so far (Chromium's Layout Instability API)
LAYOUT_SHIFT = """() => new Promise(done => {
  let sum = 0;
  new PerformanceObserver(list => { for (const e of list.getEntries()) sum += e.value; })
    .observe({type: "layout-shift", buffered: true});
  setTimeout(() => done(sum), 300);
})"""
Serving = Callable[[Settings], contextlib.AbstractContextManager[tuple[str, int]]]


@pytest.fixture()
def console(tmp_path: Path, live_server: Serving) -> Iterator[str]:
    """A live service with a token and two converted versions of ``tiny``; its URL."""
    settings = Settings(
        data_dir=tmp_path / "data", backend="inprocess", device="cpu", export_program=False, api_token=TOKEN
    )
    with live_server(settings) as (host, port):
        url = f"http://{host}:{port}"
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as api:
            for seed in (0, 1):
                checkpoint = make_checkpoint(tmp_path / f"v{seed}.pth", SPEC, seed=seed)
                files = {"checkpoint": (checkpoint.name, checkpoint.read_bytes())}
                data = {"spec": json.dumps(SPEC), "name": "tiny"}
                assert api.post("/convert", files=files, data=data).status_code == 201
        yield url


@pytest.fixture()
def page(console: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 800}, base_url=console)
        finally:
            browser.close()


def test_list_report_predict_and_alias_move(page: Any, console: str) -> None:
    api = httpx.Client(base_url=console, timeout=60)
    page.goto("/ui")
    page.get_by_role("link", name="v1", exact=True).click()
    page.wait_for_url("**/ui/models/tiny/versions/1")

    report = api.get("/models/tiny/versions/1").json()["report"]
    serving = report["serving"]
    expected = [*report["fp64"], report["fp32"], report["fp32_train"], report["stored_weights"]]
    expected += [serving["equivalence"], serving["train_same_precision"]]
    for key in ("max_rel_error", "rel_l2_error", "tolerance", "top1_agreement"):
        shown = page.locator(f"#checks td[data-key={key}]").evaluate_all(
            "cells => cells.map(c => c.dataset.value)"
        )
        assert shown == [str(check.get(key)) for check in expected], key
    passed = page.locator("#checks td[data-key=passed]").all_inner_texts()
    assert passed == ["✓ pass" if check["passed"] else "✗ fail" for check in expected]
    for field in ("params_train", "params_deploy", "convs_train", "convs_deploy"):
        assert page.locator(f"#{field.replace('_', '-')}").inner_text() == str(report[field])

    page.get_by_role("link", name="Predict", exact=True).click()
    page.get_by_label("Model").select_option("tiny")
    page.get_by_label("Version or alias").select_option("1")
    page.set_input_files("#image", PHOTO)
    page.get_by_role("button", name="Predict").click()
    page.wait_for_selector("#predictions tbody tr")
    rows = page.locator("#predictions tbody tr").evaluate_all(
        "rows => rows.map(r => [Number(r.dataset.index), Number(r.dataset.probability),"
        " r.cells[1].innerText])"
    )
    answer = api.post(
        "/predict/tiny?version=1&top_k=5", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    expected_top = [(p["index"], p["probability"], p["label"]) for p in answer.json()["predictions"][0]]
    assert [tuple(r) for r in rows] == expected_top and len(rows) == 5
    parts = page.locator("#timing .timing-row").evaluate_all("rows => rows.map(r => r.dataset.part)")
    assert parts == ["decode", "backend", "total"]

    page.get_by_role("link", name="Models", exact=True).click()
    form = page.locator("form.alias-form[data-model=tiny]")
    form.get_by_label("Alias").fill("9 lives")  # not an alias name: the browser refuses the form
    assert not form.get_by_label("Alias").evaluate("input => input.checkValidity()")
    form.get_by_label("Alias").fill("production")
    form.get_by_label("to version").select_option("2")
    form.get_by_role("button", name="Move").click()
    page.wait_for_function("document.querySelector('.alias-form .form-status').textContent.includes('401')")
    assert api.get("/models/tiny").json()["aliases"] == {}  # refused without the token

    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Keep").click()
    form.get_by_role("button", name="Move").click()
    page.wait_for_selector("[data-alias=production][data-version='2']")
    assert api.get("/models/tiny").json()["aliases"]["production"]["version"] == 2
    row = page.locator("tr[data-version='2']").inner_text()
    assert "production" in row
    assert page.get_by_label("API token").input_value() == TOKEN  # kept for the tab (sessionStorage)


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_pages_fit_the_width_without_layout_shift(page: Any, console: str, width: int, height: int) -> None:
    for version in (1, 2, 2):  # the latency page draws a chart per version asked
        answer = httpx.post(
            f"{console}/predict/tiny?version={version}",
            content=PHOTO.read_bytes(),
            headers={"Content-Type": "image/jpeg"},
        )
        assert answer.status_code == 200
    page.set_viewport_size({"width": width, "height": height})
    for path in ("/ui", "/ui/models/tiny/versions/1", "/ui/latency", "/ui/predict"):
        page.goto(path)
        page.wait_for_load_state("load")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than {width}px"
        shift = page.evaluate(LAYOUT_SHIFT)
        if path == "/ui/latency":
            assert page.locator("svg.lines").count() == 2
        assert shift == 0, f"{path} shifts its layout by {shift}"


def test_a_dropped_photo_is_predicted_from_the_keyboard(page: Any, console: str) -> None:
    page.goto("/ui/predict")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    photo = base64.b64encode(PHOTO.read_bytes()).decode()
    dropped = page.evaluate_handle(
        """b64 => {
             const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
             const data = new DataTransfer();
             data.items.add(new File([bytes], "cat.jpg", {type: "image/jpeg"}));
             return data;
           }""",
        photo,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    assert page.locator("#preview").evaluate("img => img.alt") == "the chosen image, cat.jpg"
    page.focus("#predict-form button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#predictions tbody tr")
    shown = page.locator("#predictions tbody tr").evaluate_all(
        "rows => rows.map(r => Number(r.dataset.index))"
    )
    answer = httpx.post(
        f"{console}/predict/tiny?top_k=5", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"}
    )
    assert shown == [p["index"] for p in answer.json()["predictions"][0]]
    assert page.locator("#predict-status").inner_text() == "tiny v2 answered"  # no alias: the newest
