"""Operating the platform: the unauthenticated health check and Prometheus scrape, and the admin's log tail."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse

from ..dependencies import ServicesDep
from ..errors import refusals
from ..models import Health, LogLine

API_VERSION = "v1"

public_router = APIRouter(tags=["ops"])
router = APIRouter(tags=["ops"])


@public_router.get("/healthz", response_model=Health, responses=refusals(503))
async def healthz(svc: ServicesDep) -> dict[str, Any]:
    try:
        await svc.registry.ready.remote()
        await svc.gateway.ready.remote()
        await svc.metrics.ready.remote()
        await svc.data.ready.remote()
    except Exception as exc:  # noqa: BLE001
        raise HTTPException(503, f"component unavailable: {type(exc).__name__}: {exc}") from None
    return {
        "status": "ok",
        "api": API_VERSION,
        "robot_endpoint": svc.robot_endpoint,
        "robot_endpoints": svc.robot_endpoints,
    }


@public_router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(svc: ServicesDep) -> PlainTextResponse:
    """Prometheus text exposition of the platform's metrics."""
    body = await svc.metrics.render.remote()
    return PlainTextResponse(content=body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/logs", response_model=list[LogLine], responses=refusals(422))
async def recent_logs(svc: ServicesDep, n: int = Query(100, ge=1, le=2000)) -> list[dict[str, Any]]:
    """Recent log lines from every actor (the log server's ring buffer)."""
    return await svc.metrics.logs.remote(n)
