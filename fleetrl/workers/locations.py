"""Storage locations the roles share: a local path, or an object-store URL that pyarrow opens
(``s3://bucket/prefix``, with ``?endpoint_override=...`` for an S3-compatible server) whose query stays at
its end when parts are joined (no torch, no Ray)."""

from __future__ import annotations

from pathlib import Path


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, *parts: str) -> str:
    """``location`` / ``parts``: a path (``~`` expanded), or a URL with the parts before its query."""
    if not is_url(location):
        return str(Path(location).expanduser().joinpath(*parts))
    path, sep, query = str(location).partition("?")
    return "/".join([path.rstrip("/"), *parts]) + sep + query
