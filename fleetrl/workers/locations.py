"""Storage locations the roles share: a local path, or an object-store URL that pyarrow opens
(``s3://bucket/prefix``, with ``?endpoint_override=...`` for an S3-compatible server) whose query stays at
its end when parts are joined (no torch, no Ray)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def filesystem(location: str | Path) -> tuple[Any, str]:
    """(pyarrow filesystem, the location's path in it); pyarrow is imported only when asked."""
    import pyarrow.fs as pafs

    if is_url(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), os.path.abspath(Path(location).expanduser())


def join(location: str | Path, *parts: str) -> str:
    """``location`` / ``parts``: a path (``~`` expanded), or a URL with the parts before its query."""
    if not is_url(location):
        return str(Path(location).expanduser().joinpath(*parts))
    path, sep, query = str(location).partition("?")
    return "/".join([path.rstrip("/"), *parts]) + sep + query
