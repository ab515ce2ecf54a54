"""Recently resolved versions, so ``/predict`` does not query the database on every request.

An entry lives ``ttl`` seconds: a version added or deleted by another replica is seen within that
time. This process's own conversions and deletions drop the model's entries at once. Misses (no
such model or version) are not cached.
"""

from __future__ import annotations

import asyncio
import time

from .metadata import MetadataStore, VersionRecord


class VersionCache:
    def __init__(self, metadata: MetadataStore, ttl: float) -> None:
        self.metadata, self.ttl = metadata, ttl
        self._entries: dict[tuple[str, int | None], tuple[float, VersionRecord]] = {}

    async def get(self, name: str, version: int | None) -> VersionRecord | None:
        """Version ``version`` of ``name``, or its latest when ``version`` is None."""
        key = (name, version)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        record = await asyncio.to_thread(self.metadata.get_version, name, version)
        if record is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = (now, record)
        return record

    def forget(self, name: str) -> None:
        for key in [k for k in self._entries if k[0] == name]:
            del self._entries[key]
