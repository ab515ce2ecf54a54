"""Recently resolved versions, so ``/predict`` does not query the database on every request.

A version is asked for by number, by alias, or not at all: then the ``default`` alias answers when
set, else the latest version. An entry lives ``ttl`` seconds: a version added or deleted, or an alias
moved, by another replica is seen within that time. This process's own conversions, deletions and
alias moves drop the model's entries at once. Misses (no
such model or version) are not cached. A version being deleted is ``retire``d first: from then on
this process neither serves it nor registers it again, though its row may still exist; once the
row is gone the mark is dropped (``settle``). A version a conversion of this process is storing is
``claim``ed: the conversion registers it, so the supervisor leaves it alone until it is released.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from .metadata import MetadataStore, VersionRecord

DEFAULT_ALIAS = "default"  # the version served when none is asked for; else the latest


def _identity(record: VersionRecord) -> tuple[str, int, dt.datetime]:
    """A version's row: a later version given the same number (after a delete) is another row."""
    return record.name, record.version, record.created_at


class VersionCache:
    def __init__(self, metadata: MetadataStore, ttl: float) -> None:
        self.metadata, self.ttl = metadata, ttl
        self._entries: dict[tuple[str, int | str | None], tuple[float, VersionRecord]] = {}
        self._retired: set[tuple[str, int, dt.datetime]] = set()  # versions being deleted
        self._claimed: set[tuple[str, str]] = set()  # (name, digest) being stored by a conversion

    async def get(self, name: str, version: int | str | None) -> VersionRecord | None:
        """Version ``version`` of ``name`` (a number or an alias), or its default one when None."""
        key = (name, version)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        record = await asyncio.to_thread(self._lookup, name, version)
        if record is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = (now, record)
        return record

    def _lookup(self, name: str, version: int | str | None) -> VersionRecord | None:
        if isinstance(version, str) or version is None:
            number = self.metadata.alias_version(name, version or DEFAULT_ALIAS)
            if isinstance(version, str) and number is None:
                return None
            version = number
        record = self.metadata.get_version(name, version)
        if record is None or not self.retired(record):
            return record
        if version is not None:
            return None
        live = [r for r in self.metadata.versions(name) if not self.retired(r)]  # the latest is going
        return live[-1] if live else None

    async def gone(self, name: str, version: int) -> bool:
        """Whether the version is deleted or being deleted (asked of the database, not the cache)."""
        return await asyncio.to_thread(self._lookup, name, version) is None

    def retire(self, record: VersionRecord) -> None:
        """``record`` is being deleted: answer as if it were gone, from now on."""
        self._retired.add(_identity(record))
        self.forget(record.name)

    def reinstate(self, record: VersionRecord) -> None:
        """The deletion of ``record`` failed: it is served again."""
        self._retired.discard(_identity(record))

    def retired(self, record: VersionRecord) -> bool:
        return _identity(record) in self._retired

    def settle(self, record: VersionRecord) -> None:
        """``record``'s row is deleted: nothing asks for it any more, its mark can go."""
        self._retired.discard(_identity(record))

    def claim(self, name: str, digest: str) -> None:
        """A conversion is about to store (then register) ``digest`` as a version of ``name``."""
        self._claimed.add((name, digest))

    def release(self, name: str, digest: str) -> None:
        self._claimed.discard((name, digest))

    def claimed(self, record: VersionRecord) -> bool:
        return (record.name, record.digest) in self._claimed

    def forget(self, name: str) -> None:
        for key in [k for k in self._entries if k[0] == name]:
            del self._entries[key]
