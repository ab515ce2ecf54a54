"""Text parts of a multipart form that may come as a string (``-F 'spec=<spec.json'``) or as a file
(``-F spec=@spec.json``), and the ``labels`` part's forms: a JSON list, one label per line, or the
name of a standard set (``imagenet-1k``)."""

from __future__ import annotations

import asyncio
import json

from fastapi import UploadFile

from reparam_core import STANDARD_LABEL_SETS, SpecError

MAX_PART_BYTES = 4 * 1024 * 1024  # a spec, serving options or labels part; specs are bounded again
TextPart = str | UploadFile


async def text_of(part: TextPart, field: str) -> str:
    """The part's text: a string as given, a file read as UTF-8 (at most ``MAX_PART_BYTES``)."""
    if isinstance(part, str):
        return part
    data = await asyncio.to_thread(part.file.read, MAX_PART_BYTES + 1)
    if len(data) > MAX_PART_BYTES:
        raise SpecError(f"{field}: a file of more than {MAX_PART_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SpecError(f"{field}: the file is not UTF-8 text") from None


def parse_labels(text: str) -> list[str] | str:
    """A JSON list of strings, a standard set's name, or one label per line (blank lines skipped)."""
    stripped = text.strip()
    if stripped in STANDARD_LABEL_SETS:
        return stripped
    if stripped.startswith("["):
        try:
            labels = json.loads(stripped)
        except ValueError as exc:
            raise SpecError(f"labels: not a valid JSON list ({exc})") from None
        if not all(isinstance(label, str) for label in labels):
            raise SpecError("labels: a JSON list of strings is expected")
        return list(labels)
    return [line.strip() for line in stripped.splitlines() if line.strip()]
