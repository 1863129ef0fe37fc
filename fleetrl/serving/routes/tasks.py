"""A task's life over REST: list, create, describe and delete tasks, and switch a task's algorithm."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from ..dependencies import ServicesDep
from ..errors import checked, refusals
from ..models import AlgorithmSwitch, AlgorithmSwitched, TaskCreation, TaskDeleted, TaskDetail, TaskListing

router = APIRouter(tags=["tasks"])


@router.get("/v1/tasks", response_model=list[TaskListing])
async def list_tasks(svc: ServicesDep) -> list[dict[str, Any]]:
    """Every registered task with its specs and number of robots; ``served`` is False for one listed
    but not running (created over REST in an earlier run and not restored, or dropped from the config
    while robots were still registered for it)."""
    served = set(await svc.gateway.served_tasks.remote())  # not the task manager: it is busy during a create
    return [{**t, "served": t["name"] in served} for t in await svc.registry.list_tasks.remote()]


@router.post(
    "/v1/tasks", status_code=201, response_model=TaskDetail, responses=refusals(400, 415, 409, 422, 503)
)
async def create_task(svc: ServicesDep, body: TaskCreation) -> dict[str, Any]:
    """Create a task with its policy, inference pool and (optionally) learner, while running."""
    if await svc.tasks.config.remote(body.task.name) is not None:
        raise HTTPException(409, f"task {body.task.name!r} already exists")
    return checked(await svc.tasks.create.remote(body.task, body.replay))


@router.delete("/v1/tasks/{task}", response_model=TaskDeleted, responses=refusals(404, 409))
async def delete_task(svc: ServicesDep, task: str) -> dict[str, Any]:
    """Stop serving and training a task: its replicas and learner go, its stored episodes stay. 409
    while robots are registered for it (delete them first)."""
    return checked(await svc.tasks.delete.remote(task))


@router.get("/v1/tasks/{task}", response_model=TaskDetail, responses=refusals(404))
async def get_task(svc: ServicesDep, task: str) -> dict[str, Any]:
    """The task's spec, algorithm, learner step, weight version and recent losses; ``versions``: which
    version its robots run (``GET /v1/tasks/{task}/rollout`` in full)."""
    described = await svc.tasks.describe.remote(task)
    if described is None:
        await svc.task_config(task)  # the 404, naming the tasks there are
        raise HTTPException(404, f"task {task!r} was deleted meanwhile")
    rollout = await svc.gateway.rollout_state.remote(task, summary=True)
    return {**described, "versions": rollout.get("summary")}


@router.put(
    "/v1/tasks/{task}/algorithm",
    response_model=AlgorithmSwitched,
    responses=refusals(400, 415, 404, 409, 422),
)
async def switch_algorithm(svc: ServicesDep, task: str, body: AlgorithmSwitch) -> dict[str, Any]:
    """Switch the task's learner to another algorithm at its next step (policy and replay are kept).
    409 when the algorithm cannot train this task's policy family."""
    result = checked(await svc.tasks.switch.remote(task, body.algorithm, body.config))
    return {"task": task, **result}
