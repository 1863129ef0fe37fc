"""The REST API (FastAPI), built by ``create_app`` from injected actor handles: no globals, no platform import.

Every request body is validated by pydantic; every refusal is a 4xx whose ``detail`` says what to fix. The
routes live in ``routes/`` by resource; this module only composes them into an app.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from .auth import AdminAuth
from .console import add_console
from .dependencies import Services
from .docs import add_offline_docs
from .errors import install_error_handlers, refusals
from .routes import ADMIN_ROUTERS, PUBLIC_ROUTERS


def create_app(
    *,
    registry: Any,
    gateway: Any,
    metrics: Any,
    data: Any,
    tasks: Any,
    admin_token_sha256: str,
    robot_endpoints: list[str],
    robot_server_key: str | None = None,
) -> FastAPI:
    """Build the app around actor handles (``registry``, ``gateway``, ``metrics``, ``data`` and ``tasks``,
    the task manager)."""
    app = FastAPI(
        title="fleetrl",
        version="0.1.0",
        description="Register robots, inspect tasks and the fleet, read metrics. Admin calls take the "
        "platform's admin token as a bearer token ('Authorize' above).",
        docs_url=None,  # add_offline_docs serves both from local files
        redoc_url=None,
        # operation ids are the handlers' names (create_task, start_evaluation): what generated clients call
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.services = Services(
        registry=registry,
        gateway=gateway,
        metrics=metrics,
        data=data,
        tasks=tasks,
        robot_endpoints=list(robot_endpoints),
        robot_server_key=robot_server_key,
    )
    install_error_handlers(app)
    # Every admin route needs the bearer token, and documents the 401 and 403 it may answer.
    admin = APIRouter(dependencies=[Depends(AdminAuth(admin_token_sha256))], responses=refusals(401, 403))
    for router in ADMIN_ROUTERS:
        admin.include_router(router)
    for router in PUBLIC_ROUTERS:
        app.include_router(router)
    app.include_router(admin)
    add_console(app)
    add_offline_docs(app)
    return app
