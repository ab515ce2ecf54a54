"""Path and query parameters shared by the routes, bounded where the schema can say so."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"  # JSON-schema regex: `$` is the end of the text
MAX_VERSION = 2**31 - 1

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="letters, digits, '_' and '-'")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION)]
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_VERSION, description="default: the latest version")]
