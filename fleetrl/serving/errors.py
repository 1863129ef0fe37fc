"""How the REST API refuses: every 4xx/5xx has an ``ApiError`` body whose ``detail`` says what to fix.

The handlers installed here make Starlette's and FastAPI's own refusals read the same way: a 405 names every
method the path serves, a body that is not JSON gets 415 instead of a 422 about its bytes, and a 422 lists
each invalid field.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fastapi.routing
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(BaseModel):
    """The body of every refusal: ``detail`` says what to fix; ``errors`` lists each invalid field (422)."""

    detail: str = Field(description="What was wrong, in words.")
    errors: list[dict[str, Any]] | None = Field(None, description="Each invalid field (validation only).")


REFUSALS = {
    400: "The body is not valid JSON.",
    401: "No admin token: send 'Authorization: Bearer <token>'.",
    403: "The admin token was not accepted.",
    404: "No such task, robot or episode.",
    409: "Conflicts with the current state (the detail says which).",
    415: "The body is not sent as application/json.",
    422: "Invalid input: the detail names each field and what it must be.",
    503: "A component is unavailable or has no room for the request.",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the refusals a route answers with; all of them have an ``ApiError`` body."""
    return {code: {"model": ApiError, "description": REFUSALS[code]} for code in codes}


def checked(result: dict[str, Any], *, keep_ok: bool = False) -> dict[str, Any]:
    """An actor's ``{"ok": ...}`` answer: a refusal (``code``, ``error``) becomes that HTTP error; else the
    answer, without its ``ok`` flag unless ``keep_ok``."""
    if not result.get("ok"):
        raise HTTPException(result["code"], result["error"])
    return result if keep_ok else {k: v for k, v in result.items() if k != "ok"}


def actor_refusal(exc: BaseException) -> str:
    """What an actor's exception says, without Ray's wrapping: a ``RayTaskError``'s text is the whole
    remote traceback (pid, actor id, source paths, ANSI colours), which no client should see."""
    cause = getattr(exc, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else exc)
    if isinstance(cause, KeyError) or isinstance(exc, KeyError):
        text = text.strip("'\"")  # str(KeyError) quotes its message
    return text.splitlines()[0][:500] if text else type(exc).__name__


@contextmanager
def missing_as_404(detail: str) -> Iterator[None]:
    """An actor's ``KeyError`` (no such robot or episode) inside the block becomes a 404 saying ``detail``;
    ``AmbiguousEpisode`` (an episode id several robots use) a 409 naming them."""
    from fleetrl.workers.data.store import AmbiguousEpisode

    try:
        yield
    except KeyError:
        raise HTTPException(404, detail) from None
    except AmbiguousEpisode as exc:
        raise HTTPException(409, actor_refusal(exc)) from None


def install_error_handlers(app: FastAPI) -> None:
    """Answer HTTP errors, validation failures, unavailable actors and anything unexpected on ``app``
    with ``ApiError`` bodies: every answer is JSON, none carries a traceback."""
    app.add_exception_handler(StarletteHTTPException, _refusal)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(Exception, _unexpected)


def _unavailable_actor(exc: BaseException) -> str | None:
    """What is unavailable when ``exc`` says an actor is dead, restarting or not answering, else None."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayActorError | rex.ActorUnavailableError | rex.GetTimeoutError):
        return "a platform component"
    return None


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """503 with a reason while a control actor is coming back; else 500 with an error id that the server
    log carries beside the traceback (the client never sees the traceback, pids or paths)."""
    actor = _unavailable_actor(exc)
    if actor is not None:
        log.warning(
            "REST %s %s: %s unavailable (%s)", request.method, request.url.path, actor, type(exc).__name__
        )
        return JSONResponse(
            status_code=503,
            content={"detail": f"{actor} is restarting or unavailable; retry in a few seconds"},
            headers={"Retry-After": "2"},
        )
    error_id = uuid.uuid4().hex[:12]
    log.error("REST %s %s failed (error id %s)", request.method, request.url.path, error_id, exc_info=exc)
    return JSONResponse(
        status_code=500, content={"detail": f"internal error (error id {error_id}: the server log has it)"}
    )


async def _refusal(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request.app, request.url.path))
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=headers)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    content_type = request.headers.get("content-type")
    body_error = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors())
    if body_error and content_type and not _is_json(content_type):
        return JSONResponse(
            status_code=415,
            content={"detail": f"the body must be JSON (Content-Type: application/json), not {content_type}"},
        )
    return JSONResponse(
        status_code=422,
        content={"detail": _issues(exc), "errors": [_plain(e) for e in exc.errors()]},
        headers=None,
    )


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in _flat_routes(app):
        if isinstance(getattr(route, "original_route", route), APIRoute) and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def _flat_routes(app: FastAPI) -> list[Any]:
    """The app's routes with included routers expanded: FastAPI 0.137.2 and later keep an included router
    as one node of ``app.routes`` and expand it with ``iter_route_contexts``; earlier releases copy the
    router's routes into ``app.routes``."""
    expand = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(expand(app.routes)) if expand else list(app.routes)


def _issues(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def _plain(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error as JSON: a validator's exception object in ``ctx`` becomes its message, and a
    body that was not JSON (bytes) is echoed as text, cut to 200 characters."""
    out = {k: ({n: str(v) for n, v in val.items()} if k == "ctx" else val) for k, val in error.items()}
    if isinstance(out.get("input"), bytes):
        out["input"] = out["input"][:200].decode("utf-8", errors="replace")
    return out


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
