"""What the routes are given: the platform's actor handles, stored on ``app.state`` by ``create_app`` and
handed to each route by the ``ServicesDep`` dependency, so route modules hold no globals and build no app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from fleetrl.workers.task import TaskConfig


@dataclass(frozen=True)
class Services:
    """The actors behind the API (``tasks`` is the task manager; ``gateway`` the gateways' router,
    workers/gateway/gateways.py) and the endpoints robots connect to (gateway k's is ``robot_endpoints[k]``)."""

    registry: Any
    gateway: Any
    metrics: Any
    data: Any
    tasks: Any
    robot_endpoints: list[str]
    robot_server_key: str | None = None  # the gateways' CURVE public key (None: token mode)

    @property
    def robot_endpoint(self) -> str:
        return self.robot_endpoints[0]

    async def task_config(self, name: str) -> TaskConfig:
        """The task's config, or a 404 naming the tasks there are."""
        task = await self.tasks.config.remote(name)
        if task is None:
            raise HTTPException(404, f"no task named {name!r}; tasks: {await self.tasks.names.remote()}")
        return task


def get_services(request: Request) -> Services:
    """The ``Services`` of the app serving this request."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
