"""Which version a task's robots run: the canary rollout's state, an operator's rollback (a pin), and
evaluation episodes of a chosen version. The gateway decides per episode (``workers/gateway/rollout.py``);
finished evaluations are kept by the registry."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from ray.exceptions import RayTaskError

from ..dependencies import Services, ServicesDep
from ..errors import actor_refusal, checked, refusals
from ..models import EvaluationRecord, EvaluationRequest, Rollback, RolloutState

router = APIRouter(tags=["rollout"])


@router.get("/v1/tasks/{task}/rollout", response_model=RolloutState, responses=refusals(404))
async def rollout_state(svc: ServicesDep, task: str) -> dict:
    """Mode, newest/stable/pinned versions, the running canary trial with its counts, recent verdicts,
    running evaluations and the version each robot was last sent."""
    await svc.task_config(task)
    return checked(await svc.gateway.rollout_state.remote(task))


@router.post("/v1/tasks/{task}/rollback", response_model=RolloutState, responses=refusals(404, 409, 422))
async def rollback(svc: ServicesDep, task: str, body: Rollback) -> dict:
    """Pin the fleet to an earlier version: every episode that starts from now on runs it, until
    ``DELETE /v1/tasks/{task}/rollback``. Answers once every replica holds it; 404 for a version the
    weight board no longer keeps (it keeps ``rollout.keep_versions`` published versions and version 0)."""
    await svc.task_config(task)
    return checked(await svc.gateway.rollback.remote(task, body.version))


@router.delete("/v1/tasks/{task}/rollback", response_model=RolloutState, responses=refusals(404))
async def release_rollback(svc: ServicesDep, task: str) -> dict:
    """Release the pin: new episodes run the newest version again (or, in canary mode, the stable one)."""
    await svc.task_config(task)
    return checked(await svc.gateway.rollback.remote(task, None))


@router.post(
    "/v1/tasks/{task}/evaluations", status_code=202, response_model=EvaluationRecord,
    responses=refusals(404, 409, 422),
)  # fmt: skip
async def start_evaluation(svc: ServicesDep, task: str, body: EvaluationRequest) -> dict:
    """Run ``episodes`` evaluation episodes of ``version`` on the chosen robots as they start new
    episodes; they are stored flagged ``meta.evaluation`` and not learned from. Poll
    ``GET /v1/tasks/{task}/evaluations/{id}`` for the result (success rate with a 95 % interval)."""
    await svc.task_config(task)
    if body.sim is not None:
        return await _on_sim_robots(svc, task, body)
    if body.robots is not None:
        theirs = {r["robot_id"] for r in await svc.registry.list_robots.remote(task)}
        strangers = sorted(set(body.robots) - theirs)
        if strangers:
            raise HTTPException(422, f"robots {strangers} are not registered for task {task!r}")
    return checked(
        await svc.gateway.evaluate.remote(task, body.version, body.robots, body.episodes, body.deterministic)
    )


async def _on_sim_robots(svc: Services, task: str, body: EvaluationRequest) -> dict:
    """Start the evaluation's own sim robots (``serving/sim_evaluation.py``); a robot the task's specs
    refuse, or an environment that cannot be built, is a 422 naming why."""
    from ..sim_evaluation import start_sim_evaluation

    try:
        record = await start_sim_evaluation(svc, task, body.model_dump())
    except RayTaskError as exc:
        raise HTTPException(
            422, f"the evaluation's sim robots could not start: {actor_refusal(exc)}"
        ) from None
    return checked(record)


@router.get("/v1/tasks/{task}/evaluations", response_model=list[EvaluationRecord], responses=refusals(404))
async def list_evaluations(svc: ServicesDep, task: str) -> list[dict]:
    """The task's evaluations, newest first (running ones with their progress)."""
    await svc.task_config(task)
    running = {e["evaluation_id"]: e for e in await svc.gateway.running_evaluations.remote(task)}
    stored = await svc.registry.list_evaluations.remote(task)
    return [running.get(e["evaluation_id"], e) for e in stored]


@router.get(
    "/v1/tasks/{task}/evaluations/{evaluation_id}", response_model=EvaluationRecord, responses=refusals(404)
)
async def get_evaluation(svc: ServicesDep, task: str, evaluation_id: str) -> dict:
    """One evaluation: its progress while running, its result once done."""
    for record in await list_evaluations(svc, task):
        if record["evaluation_id"] == evaluation_id:
            return record
    raise HTTPException(404, f"no evaluation {evaluation_id!r} of task {task!r}")
