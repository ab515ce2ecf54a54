"""TorchServe behind the backend protocol: a managed local process or an external server by URL.

Each version is registered as its own TorchServe model ``<name>-v<version>`` with batching
(``batch_size``/``max_batch_delay``); predictions go to ``/predictions/<name>-v<version>`` as
safetensors bytes. TorchServe drops the queued requests of a model it unregisters without
answering them: ``unregister`` answers them itself, at once.

Workers follow the worker policy (``worker_policy``): a warm version has ``workers_per_model``
workers; a cold one ``cold_workers`` (0: none). A request for a version without workers first
scales it up (``PUT /models/<model>?min_worker=N&max_worker=N&synchronous=true``; concurrent
requests wait for the same scale-up); ``place_workers`` scales idle cold versions down again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
from torch import Tensor

from reparam_core.deploy import ServingOptions

from ..config import Settings
from ..errors import BackendUnavailable
from ..torchserve_handler import wire
from .archive import MANIFEST, archive_name, build_model_dir, remove_model_dir, version_of
from .base import VersionLocks
from .torchserve_process import TorchServeProcess

log = logging.getLogger("reparam.torchserve")
PING_TIMEOUT_S = 5


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
        self.locks = VersionLocks()
        self._calls: dict[str, set[asyncio.Task[bytes]]] = {}  # predictions under way, per model
        self._workers: dict[str, int] = {}  # model -> the workers it was registered or scaled with
        self._needed: dict[str, float] = {}  # model -> when it was last asked for or kept warm
        self._cold: set[str] = set()  # models the policy lets go cold (others are warm)
        self._scaling: dict[str, asyncio.Lock] = {}  # one scale operation per model at a time
        self._warming: dict[str, asyncio.Task[None]] = {}  # scale-ups under way

    @property
    def warm_workers(self) -> int:
        return self.settings.resolved_workers

    @property
    def cold_workers(self) -> int:
        return min(self.settings.cold_workers, self.warm_workers)

    @property
    def session(self) -> aiohttp.ClientSession:
        """aiohttp on the hot path: about a seventh of httpx's CPU per request (a 150 kB POST)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
            timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def start(self) -> None:
        """A managed TorchServe: started, and answering /ping, or stopped again and an error raised."""
        if self.process is None:
            return
        store = self.settings.resolved_model_store
        if store.is_dir():  # every registration rebuilds its own folder
            for leftover in store.iterdir():
                if (
                    leftover.suffix == ".mar"
                    or leftover.name.startswith(".")
                    or (leftover / MANIFEST).exists()
                ):
                    remove_model_dir(leftover)
        try:
            await asyncio.to_thread(self.process.spawn)
            await self._wait_answering(self.process)
        except BaseException:
            await asyncio.to_thread(self.process.stop)
            raise

    async def _wait_answering(self, process: TorchServeProcess) -> None:
        deadline = time.monotonic() + self.settings.torchserve_start_timeout_s
        while time.monotonic() < deadline:
            status = process.exit_status()
            if status is not None:
                raise RuntimeError(
                    f"TorchServe exited with status {status} while starting; see {process.log_file}"
                )
            if await self.ready():
                return
            await asyncio.sleep(0.25)
        raise RuntimeError(
            f"TorchServe did not answer /ping within {self.settings.torchserve_start_timeout_s:.0f} s"
        )

    async def stop(self) -> None:
        for task in self._warming.values():
            task.cancel()
        self._workers.clear()  # a restarted TorchServe holds no registrations
        session, self._session = self._session, None  # requests from now on open a new session
        if session is not None:
            await session.close()
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)

    async def restart(self) -> bool:
        if self.process is None:
            return False  # an external TorchServe is someone else's to restart
        await self.stop()
        await self.start()
        return True

    def exited(self) -> bool:
        return self.process is not None and self.process.exit_status() is not None

    async def ready(self) -> bool:
        if self.exited():
            return False
        try:
            url = f"{self.inference_url}/ping"
            async with self.session.get(url, timeout=_seconds(PING_TIMEOUT_S)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def loaded(self) -> dict[tuple[str, int], bool]:
        models, token = [], ""
        while True:  # GET /models pages through the registrations
            params = {"limit": 100, **({"next_page_token": token} if token else {})}
            status, text = await self._management("GET", "/models", timeout=10, params=params)
            if status != 200:
                raise BackendUnavailable(f"TorchServe could not list its models: {status} {text.strip()}")
            page = json.loads(text)
            models += [m["modelName"] for m in page.get("models", [])]
            token = page.get("nextPageToken") or ""
            if not token:
                break
        # ours: named for a version and registered from our model store (an external TorchServe
        # may serve other models too)
        store = self.settings.resolved_model_store
        ours = {m: key for m in models if (key := version_of(m)) and (store / m / MANIFEST).is_file()}
        ready = await asyncio.gather(*(self._serves(model) for model in ours))
        return {key: ok for key, ok in zip(ours.values(), ready, strict=True)}

    async def _serves(self, model: str) -> bool:
        """A worker is ready, or none is wanted (cold: its next request starts them)."""
        status, text = await self._management("GET", f"/models/{model}", timeout=10)
        if status != 200:
            return False
        entries = json.loads(text)
        minimum = min((int(entry.get("minWorkers", 1)) for entry in entries), default=1)
        self._workers.setdefault(model, minimum)  # registered before this service started
        ready = any(w.get("status") == "READY" for entry in entries for w in entry.get("workers", []))
        return ready or minimum == 0

    def busy(self, name: str, version: int) -> bool:
        return self.locks.busy(name, version)

    async def register(
        self, name: str, version: int, artifacts: Path, serving: ServingOptions
    ) -> dict[str, float]:
        """Idempotent: a version already registered from its folder in the model store (by another
        replica sharing this TorchServe, or by this one a moment ago) is left as it is."""
        async with self.locks.hold(name, version):
            started = time.perf_counter()
            store = self.settings.resolved_model_store
            model = archive_name(name, version)
            if await self._registered(model):
                if await asyncio.to_thread((store / model / MANIFEST).is_file):
                    return {"archive": 0.0, "register": time.perf_counter() - started}
                await self._delete_if_present(model, version)  # its folder is gone: registered anew
            folder = await asyncio.to_thread(build_model_dir, name, version, artifacts, serving, store)
            archived = time.perf_counter()
            self._workers.pop(model, None)
            workers = self._placed(model, time.monotonic())
            params = {
                "url": folder.name,
                "model_name": model,
                "initial_workers": workers,
                "synchronous": "true",
                "batch_size": self.settings.batch_size,
                "max_batch_delay": self.settings.max_batch_delay_ms,
                "startup_timeout": self.settings.model_startup_timeout_s,
            }
            timeout = self.settings.model_startup_timeout_s + 60
            try:
                status, text = await self._management("POST", "/models", params=params, timeout=timeout)
                if status == 409:  # another replica registered it meanwhile, from the same folder
                    log.info("%s was registered with TorchServe by another replica", model)
                    return {"archive": archived - started, "register": time.perf_counter() - archived}
                if status >= 300:
                    raise BackendUnavailable(f"TorchServe refused {model}: {status} {text.strip()}")
            except BaseException:
                await asyncio.to_thread(remove_model_dir, folder)  # none outlives a failed registration
                raise
            self._workers[model] = workers
            log.info("registered %s with TorchServe (%d workers)", model, workers)
            return {"archive": archived - started, "register": time.perf_counter() - archived}

    async def unregister(self, name: str, version: int) -> None:
        """Unregister, then answer the requests TorchServe dropped (BackendUnavailable, at once)."""
        model = archive_name(name, version)
        async with self.locks.hold(name, version):
            await self._delete_if_present(model, version)
            for call in self._calls.pop(model, set()):
                call.cancel()
            self._workers.pop(model, None)
            self._needed.pop(model, None)
            self._scaling.pop(model, None)
            await asyncio.to_thread(remove_model_dir, self.settings.resolved_model_store / model)

    def _placed(self, model: str, now: float) -> int:
        """The workers the policy gives a model now: cold ones idle for ``idle_unload_s`` get
        ``cold_workers``; the others (and models the policy has not seen yet: new) are warm."""
        if model not in self._cold:
            self._needed[model] = now
            return self.warm_workers
        idle = now - self._needed.get(model, -math.inf)
        return self.warm_workers if idle < self.settings.idle_unload_s else self.cold_workers

    async def place_workers(self, warm: set[tuple[str, int]], cold: set[tuple[str, int]]) -> None:
        """Scale warm versions up (in the background) and idle cold ones down (at once)."""
        self._cold = {archive_name(*key) for key in cold}
        now = time.monotonic()
        for key in warm:
            model = archive_name(*key)
            self._needed[model] = now
            if self._workers.get(model, self.warm_workers) < self.warm_workers:
                self.prewarm(*key)
        for model in sorted(self._cold & self._workers.keys()):
            if self._workers[model] > self._placed(model, now) and not self._calls.get(model):
                await self._scale_down(model)

    def prewarm(self, name: str, version: int) -> None:
        """Start loading a version's warm workers now (an alias moved to it), without waiting."""
        model = archive_name(name, version)
        self._needed[model] = time.monotonic()
        if self._workers.get(model, self.warm_workers) < self.warm_workers:
            task = self._scale_up(model)
            task.add_done_callback(lambda done: done.cancelled() or done.exception())  # logged there

    def _scale_up(self, model: str) -> asyncio.Task[None]:
        """The scale-up of ``model`` to its warm workers: one at a time, shared by who waits for it."""
        task = self._warming.get(model)
        if task is None or task.done():
            task = self._warming[model] = asyncio.ensure_future(self._scale_to(model, self.warm_workers))
            task.add_done_callback(
                lambda done: self._warming.pop(model) if self._warming.get(model) is done else None
            )
        return task

    async def _wait_for_workers(self, model: str, name: str, version: int) -> None:
        """A cold model's request: its scale-up first (again if it was scaled down meanwhile)."""
        while self._workers.get(model, 1) == 0:
            warming = self._scale_up(model)
            try:
                await asyncio.shield(warming)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if warming.cancelled() and current is not None and not current.cancelling():
                    raise BackendUnavailable(f"{name} v{version} was unloaded while it started") from None
                raise

    async def _scale_down(self, model: str) -> None:
        async with self._scaling.setdefault(model, asyncio.Lock()):
            before = self._workers.get(model)
            if before is None or before <= self._placed(model, time.monotonic()) or self._calls.get(model):
                return  # unregistered, or asked for meanwhile
            self._workers[model] = self.cold_workers  # a request from now on scales it up again
            try:
                await self._scale(model, self.cold_workers)
            except BackendUnavailable as exc:
                self._workers[model] = before
                log.warning("could not scale %s down: %s", model, exc.detail)
                return
            log.info("%s idle: scaled down to %d workers", model, self.cold_workers)

    async def _scale_to(self, model: str, workers: int) -> None:
        async with self._scaling.setdefault(model, asyncio.Lock()):
            if model not in self._workers or self._workers[model] >= workers:
                return
            started = time.monotonic()
            try:
                await self._scale(model, workers)
            except BackendUnavailable as exc:
                log.error("could not scale %s up: %s", model, exc.detail)
                raise
            self._workers[model] = workers
            log.info("%s scaled up to %d workers in %.1f s", model, workers, time.monotonic() - started)

    async def _scale(self, model: str, workers: int) -> None:
        params = {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
        timeout = self.settings.model_startup_timeout_s + 60
        status, text = await self._management("PUT", f"/models/{model}", params=params, timeout=timeout)
        if status >= 300:
            raise BackendUnavailable(
                f"TorchServe could not scale {model} to {workers} workers: {text.strip()}"
            )

    async def _registered(self, model: str) -> bool:
        status, text = await self._management("GET", f"/models/{model}", timeout=10)
        if status not in (200, 404):
            raise BackendUnavailable(f"TorchServe could not describe {model}: {status} {text.strip()}")
        return status == 200

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
            log.warning("TorchServe management API unreachable (%s %s): %r", method, path, exc)
            raise BackendUnavailable("the inference backend's management API is unreachable") from None

    async def predict(self, name: str, version: int, batch: Tensor) -> Tensor:
        model = archive_name(name, version)
        self._needed[model] = time.monotonic()
        await self._wait_for_workers(model, name, version)
        call = asyncio.ensure_future(self._post(model, wire.pack(batch), name, version))
        calls = self._calls.setdefault(model, set())
        calls.add(call)
        try:
            return wire.unpack(await call)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if call.cancelled() and current is not None and not current.cancelling():
                raise BackendUnavailable(f"{name} v{version} was unloaded") from None
            raise
        finally:
            if model in self._workers:  # still registered: idle from the end of its last request
                self._needed[model] = time.monotonic()
            calls.discard(call)
            if not calls and self._calls.get(model) is calls:
                del self._calls[model]

    async def _post(self, model: str, body: bytes, name: str, version: int) -> bytes:
        url = f"{self.inference_url}/predictions/{model}"
        try:
            async with self.session.post(
                url, data=body, headers={"Content-Type": wire.CONTENT_TYPE}
            ) as response:
                if response.status != 200:
                    raise BackendUnavailable(f"TorchServe answered {response.status} for {name} v{version}")
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("TorchServe unreachable for %s: %r", model, exc)
            raise BackendUnavailable("the inference backend is unreachable") from None


def _seconds(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=5)
