"""Which stored versions keep TorchServe workers loaded (warm), and which may be unloaded (cold).

A TorchServe worker is a Python process holding torch (~600 MB on the CPU): with every version
warm, memory grows with the number of stored versions. ``REPARAM_WARM_VERSIONS``:
``aliased_and_latest`` (the default) keeps ``workers_per_model`` workers for the latest version of
each model and every version an alias points at; the others are registered with
``cold_workers`` workers (0: none), scaled up by their first request (its latency then holds a
worker's start) and scaled down again after ``idle_unload_s`` without a request. ``all`` keeps
every version warm.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Settings

Key = tuple[str, int]


def split_warm_cold(
    settings: Settings, stored: Iterable[Key], aliased: Iterable[Key]
) -> tuple[set[Key], set[Key]]:
    """The stored versions kept warm, and those that may go cold."""
    stored = set(stored)
    if settings.warm_versions == "all":
        return stored, set()
    latest: dict[str, int] = {}
    for name, version in stored:
        latest[name] = max(version, latest.get(name, version))
    warm = {(name, version) for name, version in latest.items()} | (set(aliased) & stored)
    return warm, stored - warm
