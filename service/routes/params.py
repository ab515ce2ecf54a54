"""Path and query parameters shared by the routes, bounded where the schema can say so."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query

from ..errors import BadInput

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"  # JSON-schema regex: `$` is the end of the text
MAX_VERSION = 2**31 - 1
# A version number, or an alias (a name: it starts with a letter, so it is never a number).
VERSION_OR_ALIAS = r"^(?:[1-9][0-9]{0,9}|[A-Za-z][A-Za-z0-9_-]{0,62})$"

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="letters, digits, '_' and '-'")]
AliasName = Annotated[
    str, Path(pattern=NAME_PATTERN, description="e.g. production; letters, digits, '_' and '-'")
]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION)]
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


async def _version_or_alias(
    version: Annotated[
        str | None,
        Query(
            pattern=VERSION_OR_ALIAS,
            description="a version number or an alias; default: the `default` alias, else the latest version",
        ),
    ] = None,
) -> int | str | None:
    if version is None or not version.isdigit():
        return version
    if int(version) > MAX_VERSION:
        raise BadInput(f"query.version: at most {MAX_VERSION} (got {version!r})")
    return int(version)


VersionQuery = Annotated[int | str | None, Depends(_version_or_alias)]
