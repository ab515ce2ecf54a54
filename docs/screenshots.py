"""Screenshots of the web console (docs/console.md) at laptop and phone width, into docs/screenshots/.

Starts the service on loopback (in-process backend, a temporary data folder, an API token), converts
the `reparam example` model twice (the second time served in bf16 where the CPU has it, else
channels-first), asks /predict for the photo over a few seconds (the latency chart's points),
points `production` at v1, then photographs each page in Debian's `chromium` driven by Playwright:

    PYTHONPATH=$PWD .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import sync_playwright

from reparam_core.deploy import cpu_capabilities
from reparam_core.example import write_example
from service.app import create_app
from service.config import Settings
from service.main import server_config
from service.ui import LatencySampler

OUT = Path(__file__).resolve().parent / "screenshots"
TOKEN = "screenshot-token"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@contextlib.contextmanager
def serving(data: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(
        data_dir=data,
        backend="inprocess",
        device="cpu",
        export_program=False,
        api_token=TOKEN,
        host="127.0.0.1",
        port=port,
    )
    app = create_app(settings)
    app.state.latency = LatencySampler(app.state.metrics.predict_latency, interval_s=1.0)
    server = uvicorn.Server(server_config(settings, app))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def populate(url: str, folder: Path) -> None:
    paths = write_example(folder)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    second = {"precision": "bf16"} if cpu_capabilities().bf16 else {"channels_last": False}
    with httpx.Client(base_url=url, timeout=300) as client:
        for serving in ({}, second):
            files = {"checkpoint": paths["checkpoint"].open("rb")}
            data = {"spec": paths["spec"].read_text(), "name": "demo", "serving": json.dumps(serving)}
            client.post("/convert", headers=auth, files=files, data=data).raise_for_status()
        photo = paths["photo"].read_bytes()
        for i in range(40):  # 8 s of requests: several sampling intervals
            version = 1 + i % 2
            client.post(
                f"/predict/demo?version={version}", content=photo, headers={"Content-Type": "image/jpeg"}
            ).raise_for_status()
            time.sleep(0.2)
        client.get("/predict/demo?image=not-an-image")  # a 4xx in the request counts
        client.put("/models/demo/aliases/production", headers=auth, json={"version": 1}).raise_for_status()


def shoot(url: str, photo: Path) -> None:
    browser_path = next(filter(None, map(shutil.which, BROWSERS)), None)
    if browser_path is None:
        raise SystemExit("no chromium found: apt-get install chromium")
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path)
        for size, (width, height) in SIZES.items():
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{url}/ui")
            page.screenshot(path=OUT / f"models-{size}.png")
            page.goto(f"{url}/ui/models/demo/versions/1")
            page.screenshot(path=OUT / f"version-{size}.png", full_page=True)
            page.goto(f"{url}/ui/latency")
            page.screenshot(path=OUT / f"latency-{size}.png", full_page=True)
            page.goto(f"{url}/ui/predict")
            page.set_input_files("#image", photo)
            page.click("#predict-form button[type=submit]")
            page.wait_for_selector("#predictions tbody tr")
            page.screenshot(path=OUT / f"predict-{size}.png", full_page=True)
            page.close()
        browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, serving(Path(tmp) / "data") as url:
        populate(url, Path(tmp) / "example")
        shoot(url, Path(tmp) / "example" / "cat.jpg")
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
