"""What the data server holds, over REST: a task's data summary, learning curves, stored episodes and
failure states, demonstration imports, and per-episode outcome labels."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query

from ..dependencies import ServicesDep
from ..errors import actor_refusal, missing_as_404, refusals
from ..models import (
    Curves,
    DemoImport,
    EpisodeLabel,
    EpisodeRow,
    EpisodeSummary,
    FailureStates,
    ImportResult,
    TaskData,
)

router = APIRouter(tags=["data"])


def no_episode(episode_id: str, robot_id: str | None) -> str:
    return f"no episode with id {episode_id!r}" + (f" of robot {robot_id!r}" if robot_id else "")


ROBOT_OF_EPISODE = Query(
    None,
    description="The robot whose episode this is. Episodes are identified by (robot, episode id); the id "
    "alone is enough while one robot used it, else the answer is 409 naming the robots.",
)


@router.get("/v1/tasks/{task}/data", response_model=TaskData, responses=refusals(404))
async def task_data(svc: ServicesDep, task: str) -> dict[str, Any]:
    """Episodes, hours, outcome and intervention counts, replay sizes and the snapshot of one task, and
    the data server's replay refill after its last start (``refill``: episodes planned, loaded, done)."""
    await svc.task_config(task)
    stats = await svc.data.stats.remote(task)
    return {"task": task, **stats["store"], "replay": stats["replay"], "refill": stats["refill"]}


@router.get("/v1/tasks/{task}/failure_states", response_model=FailureStates, responses=refusals(404))
async def failure_states(svc: ServicesDep, task: str) -> dict[str, Any]:
    """Where the task's episodes fail (failure points, a histogram over the episode): the states
    return-and-explore restarts robots from."""
    await svc.task_config(task)
    return await svc.data.failure_states.remote(task)


@router.get("/v1/tasks/{task}/curves", response_model=Curves, responses=refusals(404, 422))
async def task_curves(
    svc: ServicesDep, task: str, window: int = Query(20, ge=1, le=10_000)
) -> dict[str, Any]:
    """Success, intervention and success-without-intervention rates per window of ``window`` online
    episodes vs. cumulative robot-hours, from the durable catalog (they survive a restart)."""
    await svc.task_config(task)
    return await svc.data.curves.remote(task, window)


@router.get("/v1/tasks/{task}/episodes", response_model=list[EpisodeRow], responses=refusals(404, 422))
async def task_episodes(
    svc: ServicesDep, task: str, limit: int = Query(50, ge=1, le=1000)
) -> list[dict[str, Any]]:
    """The task's newest stored episodes (catalog rows), newest first."""
    await svc.task_config(task)
    return await svc.data.recent_episodes.remote(task, limit)


@router.post(
    "/v1/tasks/{task}/demos",
    status_code=201,
    response_model=ImportResult,
    responses=refusals(400, 415, 404, 422),
)
async def import_demos(svc: ServicesDep, task: str, body: DemoImport) -> dict[str, Any]:
    """Import demonstrations from a folder the data server can read (all-or-nothing validation)."""
    await svc.task_config(task)
    try:
        return await svc.data.import_demos.remote(task, body.path, body.format, body.observation_keys)
    except ValueError as exc:  # DatasetImportError names the file and the problem
        raise HTTPException(422, actor_refusal(exc)) from None


@router.get("/v1/episodes/{episode_id}", response_model=EpisodeSummary, responses=refusals(404, 409))
async def get_episode(
    svc: ServicesDep, episode_id: str, robot_id: str | None = ROBOT_OF_EPISODE
) -> dict[str, Any]:
    """One stored episode's catalog row and metadata."""
    with missing_as_404(no_episode(episode_id, robot_id)):
        return await svc.data.episode_summary.remote(episode_id, robot_id)


@router.post(
    "/v1/episodes/{episode_id}/label", response_model=EpisodeRow, responses=refusals(400, 415, 404, 409, 422)
)
async def label_episode(
    svc: ServicesDep, episode_id: str, body: EpisodeLabel, robot_id: str | None = ROBOT_OF_EPISODE
) -> dict[str, Any]:
    """A human success/failure label; it replaces the episode's outcome for learning."""
    with missing_as_404(no_episode(episode_id, robot_id)):
        return await svc.data.label.remote(episode_id, body.outcome, body.labelled_by, robot_id)
