"""TorchServe behind the backend protocol: a managed local process or an external server by URL.

Each version is registered as its own TorchServe model ``<name>-v<version>`` with batching
(``batch_size``/``max_batch_delay``) and at least one worker; predictions go to
``/predictions/<name>-v<version>`` as safetensors bytes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
from torch import Tensor

from reparam_core.deploy import ServingOptions

from ..config import Settings
from ..errors import BackendUnavailable
from ..torchserve_handler import wire
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
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """aiohttp on the hot path: about a seventh of httpx's CPU per request (a 150 kB POST)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
            timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def start(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.start)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)

    async def ready(self) -> bool:
        try:
            async with self.session.get(f"{self.inference_url}/ping", timeout=_seconds(2)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
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
        status, text = await self._management("POST", "/models", params=params, timeout=timeout)
        if status >= 300:
            raise BackendUnavailable(f"TorchServe refused {model}: {status} {text.strip()}")
        log.info("registered %s with TorchServe", model)

    async def unregister(self, name: str, version: int) -> None:
        await self._delete_if_present(archive_name(name, version), version)
        (self.settings.resolved_model_store / f"{archive_name(name, version)}.mar").unlink(missing_ok=True)

    async def _delete_if_present(self, model: str, version: int) -> None:
        status, text = await self._management("DELETE", f"/models/{model}/{version}", timeout=60)
        if status not in (200, 404):
            raise BackendUnavailable(f"TorchServe could not unregister {model}: {text.strip()}")

    async def _management(
        self, method: str, path: str, timeout: float, params: dict[str, Any] | None = None
    ) -> tuple[int, str]:
        query = {k: str(v) for k, v in (params or {}).items()}
        try:
            async with self.session.request(
                method, f"{self.management_url}{path}", params=query, timeout=_seconds(timeout)
            ) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(f"TorchServe management API unreachable: {exc!r}") from None

    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor:
        url = f"{self.inference_url}/predictions/{archive_name(name, version)}"
        try:
            async with self.session.post(
                url, data=wire.pack(batch), headers={"Content-Type": wire.CONTENT_TYPE}
            ) as response:
                if response.status != 200:
                    raise BackendUnavailable(f"TorchServe answered {response.status} for {name} v{version}")
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(f"TorchServe unreachable: {exc!r}") from None
        return wire.unpack(body)


def _seconds(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=5)
