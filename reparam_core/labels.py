"""Standard label sets a spec can name instead of listing: ``"labels": "imagenet-1k"``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
STANDARD_LABEL_SETS = ("imagenet-1k",)  # each a file data/<name>.txt, one class name per line


@cache
def standard_labels(name: str) -> tuple[str, ...]:
    """The class names of a standard set, in class-index order."""
    if name not in STANDARD_LABEL_SETS:
        raise ValueError(f"unknown label set {name!r}; known: {', '.join(STANDARD_LABEL_SETS)}")
    return tuple((DATA / f"{name}.txt").read_text(encoding="utf-8").splitlines())
