"""The operator console: one self-contained HTML page that the REST app serves at ``GET /console``.

Plain HTML, CSS and JavaScript in ``static/console.html``: no front-end build and no CDN, because a
robot network may have no internet. Loading the page needs no token; everything it shows comes from the
authenticated ``/v1`` API, which the page calls with ``fetch()`` and the admin token the operator enters
once (kept in ``sessionStorage``, or handed over in the URL fragment ``#token=...``, which never reaches
the server).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

# The page may talk to this origin only, and nothing may frame it (it holds an admin token).
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


def console_html() -> str:
    """The page, read from the package data (``fleetrl/serving/static/console.html``)."""
    return (resources.files(__package__) / "static" / "console.html").read_text(encoding="utf-8")


def add_console(app: FastAPI, path: str = "/console") -> None:
    """Register ``GET <path>`` on ``app``; the page is read once, when the app is built."""
    html = console_html()

    @app.get(path, include_in_schema=False, response_class=HTMLResponse)
    async def console() -> HTMLResponse:
        return HTMLResponse(html, headers=_HEADERS)
