"""TorchServe behind the backend protocol: a managed local process or an external server by URL.

Each version is registered as its own TorchServe model ``<name>-v<version>`` with batching
(``batch_size``/``max_batch_delay``) and at least one worker; predictions go to
``/predictions/<name>-v<version>`` as safetensors bytes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
from torch import Tensor

from reparam_core.serving import ServingOptions

from ..config import Settings
from ..errors import BackendUnavailable
from . import wire
from .archive import archive_name, build_mar
from .torchserve_process import TorchServeProcess

log = logging.getLogger("reparam.torchserve")


class TorchServeBackend:
    name = "torchserve"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process = None if settings.torchserve_url else TorchServeProcess(settings)
        if self.process is not None:
            self.inference_url, self.management_url = self.process.inference_url, self.process.management_url
        else:
            self.inference_url = str(settings.torchserve_url).rstrip("/")
            self.management_url = str(settings.torchserve_management_url or settings.torchserve_url).rstrip(
                "/"
            )
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), limits=limits)

    async def start(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.start)

    async def stop(self) -> None:
        await self.client.aclose()
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)

    async def ready(self) -> bool:
        try:
            return (await self.client.get(f"{self.inference_url}/ping", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    async def register(self, name: str, version: int, artifacts: Path, serving: ServingOptions) -> None:
        store = self.settings.resolved_model_store
        mar = await asyncio.to_thread(build_mar, name, version, artifacts, serving, store)
        model = archive_name(name, version)
        await self._delete_if_present(model, version)
        params = {
            "url": mar.name,
            "model_name": model,
            "initial_workers": self.settings.resolved_workers,
            "synchronous": "true",
            "batch_size": self.settings.batch_size,
            "max_batch_delay": self.settings.max_batch_delay_ms,
            "startup_timeout": self.settings.model_startup_timeout_s,
        }
        timeout = self.settings.model_startup_timeout_s + 60
        response = await self._management("POST", "/models", params=params, timeout=timeout)
        if response.status_code >= 300:
            raise BackendUnavailable(
                f"TorchServe refused {model}: {response.status_code} {response.text.strip()}"
            )
        log.info("registered %s with TorchServe", model)

    async def unregister(self, name: str, version: int) -> None:
        await self._delete_if_present(archive_name(name, version), version)
        (self.settings.resolved_model_store / f"{archive_name(name, version)}.mar").unlink(missing_ok=True)

    async def _delete_if_present(self, model: str, version: int) -> None:
        response = await self._management("DELETE", f"/models/{model}/{version}", timeout=60)
        if response.status_code not in (200, 404):
            raise BackendUnavailable(f"TorchServe could not unregister {model}: {response.text.strip()}")

    async def _management(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return await self.client.request(method, f"{self.management_url}{path}", **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"TorchServe management API unreachable: {exc}") from None

    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor:
        url = f"{self.inference_url}/predictions/{archive_name(name, version)}"
        try:
            response = await self.client.post(
                url, content=wire.pack(batch), headers={"Content-Type": wire.CONTENT_TYPE}
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"TorchServe unreachable: {exc}") from None
        if response.status_code != 200:
            raise BackendUnavailable(f"TorchServe answered {response.status_code} for {name} v{version}")
        return wire.unpack(response.content)
