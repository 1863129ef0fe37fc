"""The REST API (FastAPI), built by ``create_app`` from injected actor handles: no globals, no platform import.

Every request body is validated by pydantic; every refusal is a 4xx whose ``detail`` says what to fix.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetrl.workers.task import NAME_RE, ArraySpecConfig, ReplayConfig, TaskConfig, spec_mismatch

from .auth import AdminAuth
from .console import add_console

log = logging.getLogger(__name__)
API_VERSION = "v1"


class RobotRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE, description="Human-readable robot name.")
    task: str = Field(pattern=NAME_RE, description="Task the robot works on.")
    observation_spec: dict[str, ArraySpecConfig] = Field(description="What the robot observes.")
    action_spec: ArraySpecConfig = Field(description="One control step's action.")


class DemoImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="Folder on the data server's filesystem.")
    format: Literal["fleetrl", "lerobot"] = Field(
        "fleetrl", description="Our Parquet episodes or LeRobot v2/v3."
    )
    observation_keys: dict[str, str] | None = Field(
        None, description="LeRobot feature name -> task observation key (default observation.<key>)."
    )


class EpisodeLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["success", "failure"] = Field(description="The label.")
    labelled_by: Literal["human", "critic"] = Field("human", description="Who labelled it.")


class ResetRequest(BaseModel):
    """Where the robot's next episode starts: a state it knows by name, a recorded step of a stored
    episode, or a failure point the platform recorded for its task (return-and-explore)."""

    model_config = ConfigDict(extra="forbid")
    state: str | None = Field(None, min_length=1, max_length=64, description="A named state, e.g. 'initial'.")
    episode_id: str | None = Field(None, min_length=1, max_length=128, description="A stored episode.")
    step: int = Field(0, ge=0, description="The step of that episode to restart from.")
    failure: bool = Field(False, description="Restart from a recorded failure state of the robot's task.")

    @model_validator(mode="after")
    def _one_target(self) -> ResetRequest:
        given = [self.state is not None, self.episode_id is not None, self.failure]
        if sum(given) != 1:
            raise ValueError("give exactly one of state, episode_id (with step) or failure: true")
        return self


class AlgorithmSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str = Field(min_length=1, description="Registered algorithm name (ppo, awr, qam, bc, ...).")
    config: dict[str, Any] = Field(default_factory=dict, description="The algorithm's config; {} = defaults.")


class TaskCreation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: TaskConfig = Field(description="The task: specs, chunk length, policy, inference pool, learner.")
    replay: ReplayConfig | None = Field(None, description="Replay settings (default: the platform's).")


class RobotCredentials(BaseModel):
    robot_id: str
    name: str
    task: str
    token: str = Field(description="Shown once; the platform keeps only its hash.")
    endpoint: str = Field(description="ZeroMQ endpoint the robot connects its DEALER socket to.")
    chunk_len: int


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


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


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


def create_app(
    *,
    registry: Any,
    gateway: Any,
    metrics: Any,
    data: Any,
    tasks: Any,
    admin_token_sha256: str,
    robot_endpoint: str,
) -> FastAPI:
    """Build the app around actor handles (``registry``, ``gateway``, ``metrics``, ``data`` and ``tasks``,
    the task manager)."""
    app = FastAPI(
        title="fleetrl",
        version="0.1.0",
        description="Register robots, inspect tasks and the fleet, read metrics.",
    )
    admin_auth = AdminAuth(admin_token_sha256)

    def admin(*codes: int) -> dict[str, Any]:
        """Route options of an admin call: the bearer token is required, and it may answer ``codes``."""
        return {"dependencies": [Depends(admin_auth)], "responses": refusals(401, 403, *codes)}

    async def task_config(name: str) -> TaskConfig:
        task = await tasks.config.remote(name)
        if task is None:
            raise HTTPException(404, f"no task named {name!r}; tasks: {await tasks.names.remote()}")
        return task

    @app.exception_handler(StarletteHTTPException)
    async def _refusal(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type")
        body_error = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors())
        if body_error and content_type and not _is_json(content_type):
            return JSONResponse(
                status_code=415,
                content={
                    "detail": f"the body must be JSON (Content-Type: application/json), not {content_type}"
                },
            )
        return JSONResponse(
            status_code=422,
            content={"detail": _issues(exc), "errors": [_plain(e) for e in exc.errors()]},
            headers=None,
        )

    async def live_robots() -> dict[str, dict[str, Any]]:
        try:
            stats = await gateway.stats.remote()
        except Exception:  # noqa: BLE001 - registry data is still worth returning
            return {}
        return {r["robot_id"]: r for r in stats["robots"]}

    def with_live(robot: dict[str, Any], live: dict[str, dict[str, Any]]) -> dict[str, Any]:
        row = live.get(robot["robot_id"])
        control = row.get("control", "autonomous") if row else "autonomous"
        return {**robot, "online": bool(row and row["online"]), "control": control, "stats": row}

    @app.get("/healthz", tags=["ops"], responses=refusals(503))
    async def healthz() -> dict[str, Any]:
        try:
            await registry.ready.remote()
            await gateway.ready.remote()
            await metrics.ready.remote()
            await data.ready.remote()
        except Exception as exc:  # noqa: BLE001
            raise HTTPException(503, f"component unavailable: {type(exc).__name__}: {exc}") from None
        return {"status": "ok", "api": API_VERSION, "robot_endpoint": robot_endpoint}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition of the platform's metrics."""
        body = await metrics.render.remote()
        return PlainTextResponse(content=body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/logs", tags=["ops"], **admin(422))
    async def recent_logs(n: int = Query(100, ge=1, le=2000)) -> list[dict[str, Any]]:
        """Recent log lines from every actor (the log server's ring buffer)."""
        return await metrics.logs.remote(n)

    @app.get("/v1/tasks", tags=["tasks"], **admin())
    async def list_tasks() -> list[dict[str, Any]]:
        """Every registered task with its specs and number of robots; ``served`` is False for one listed
        but not running (created over REST in an earlier run and not restored, or dropped from the config
        while robots were still registered for it)."""
        served = set(await gateway.served_tasks.remote())  # not the task manager: it is busy during a create
        return [{**t, "served": t["name"] in served} for t in await registry.list_tasks.remote()]

    @app.post(
        "/v1/tasks",
        status_code=201,
        tags=["tasks"],
        **admin(400, 415, 409, 422, 503),
    )
    async def create_task(body: TaskCreation) -> dict[str, Any]:
        """Create a task with its policy, inference pool and (optionally) learner, while running."""
        if await tasks.config.remote(body.task.name) is not None:
            raise HTTPException(409, f"task {body.task.name!r} already exists")
        result = await tasks.create.remote(body.task, body.replay)
        if not result.pop("ok"):
            raise HTTPException(result["code"], result["error"])
        return result

    @app.delete("/v1/tasks/{task}", tags=["tasks"], **admin(404, 409))
    async def delete_task(task: str) -> dict[str, Any]:
        """Stop serving and training a task: its replicas and learner go, its stored episodes stay. 409
        while robots are registered for it (delete them first)."""
        result = await tasks.delete.remote(task)
        if not result.pop("ok"):
            raise HTTPException(result["code"], result["error"])
        return result

    @app.get("/v1/tasks/{task}", tags=["tasks"], **admin(404))
    async def get_task(task: str) -> dict[str, Any]:
        """The task's spec, algorithm, learner step, weight version and recent losses."""
        described = await tasks.describe.remote(task)
        if described is None:
            await task_config(task)  # the 404, naming the tasks there are
            raise HTTPException(404, f"task {task!r} was deleted meanwhile")
        return described

    @app.put(
        "/v1/tasks/{task}/algorithm",
        tags=["tasks"],
        **admin(400, 415, 404, 409, 422),
    )
    async def switch_algorithm(task: str, body: AlgorithmSwitch) -> dict[str, Any]:
        """Switch the task's learner to another algorithm at its next step (policy and replay are kept).
        409 when the algorithm cannot train this task's policy family."""
        result = await tasks.switch.remote(task, body.algorithm, body.config)
        if not result.pop("ok"):
            raise HTTPException(result["code"], result["error"])
        return {"task": task, **result}

    @app.post(
        "/v1/robots",
        status_code=201,
        tags=["robots"],
        **admin(400, 415, 404, 422),
    )
    async def register_robot(body: RobotRegistration) -> RobotCredentials:
        task = await task_config(body.task)
        obs = {k: v.model_dump(exclude_none=True) for k, v in body.observation_spec.items()}
        act = body.action_spec.model_dump(exclude_none=True)
        problem = spec_mismatch(task, obs, act)
        if problem:
            raise HTTPException(422, problem)
        rec = await registry.register_robot.remote(body.name, body.task, obs, act)
        return RobotCredentials(**rec, endpoint=robot_endpoint, chunk_len=task.chunk_len)

    @app.get("/v1/robots", tags=["robots"], **admin())
    async def list_robots(task: str | None = None) -> list[dict[str, Any]]:
        live = await live_robots()
        return [with_live(r, live) for r in await registry.list_robots.remote(task)]

    @app.get("/v1/robots/{robot_id}", tags=["robots"], **admin(404))
    async def get_robot(robot_id: str) -> dict[str, Any]:
        try:
            robot = await registry.get_robot.remote(robot_id)
        except KeyError:
            raise HTTPException(404, f"no robot with id {robot_id!r}") from None
        return with_live(robot, await live_robots())

    @app.post(
        "/v1/robots/{robot_id}/reset",
        tags=["robots"],
        **admin(400, 415, 404, 409, 422),
    )
    async def reset_robot(robot_id: str, body: ResetRequest) -> dict[str, Any]:
        """Ask a connected robot to start its next episode from a state (sim robots restore it; real
        robots receive it as an operator instruction). 409 if the robot is offline."""
        try:
            await registry.get_robot.remote(robot_id)
        except KeyError:
            raise HTTPException(404, f"no robot with id {robot_id!r}") from None
        result = await gateway.request_reset.remote(robot_id, body.model_dump(exclude_none=True))
        if not result.get("ok"):
            raise HTTPException(result["code"], result["error"])
        return result

    @app.delete(
        "/v1/robots/{robot_id}",
        status_code=204,
        tags=["robots"],
        **admin(404),
    )
    async def delete_robot(robot_id: str) -> Response:
        try:
            await registry.delete_robot.remote(robot_id)
        except KeyError:
            raise HTTPException(404, f"no robot with id {robot_id!r}") from None
        await gateway.revoke.remote(robot_id)
        return Response(status_code=204)

    @app.get("/v1/tasks/{task}/data", tags=["data"], **admin(404))
    async def task_data(task: str) -> dict[str, Any]:
        """Episodes, hours, outcome and intervention counts, replay sizes and the snapshot of one task."""
        await task_config(task)
        stats = await data.stats.remote(task)
        return {"task": task, **stats["store"], "replay": stats["replay"]}

    @app.get(
        "/v1/tasks/{task}/failure_states",
        tags=["data"],
        **admin(404),
    )
    async def failure_states(task: str) -> dict[str, Any]:
        """Where the task's episodes fail (failure points, a histogram over the episode): the states
        return-and-explore restarts robots from."""
        await task_config(task)
        return await data.failure_states.remote(task)

    @app.get(
        "/v1/tasks/{task}/curves",
        tags=["data"],
        **admin(404, 422),
    )
    async def task_curves(task: str, window: int = Query(20, ge=1, le=10_000)) -> dict[str, Any]:
        """Success, intervention and success-without-intervention rates per window of ``window`` online
        episodes vs. cumulative robot-hours, from the durable catalog (they survive a restart)."""
        await task_config(task)
        return await data.curves.remote(task, window)

    @app.get(
        "/v1/tasks/{task}/episodes",
        tags=["data"],
        **admin(404, 422),
    )
    async def task_episodes(task: str, limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        """The task's newest stored episodes (catalog rows), newest first."""
        await task_config(task)
        return await data.recent_episodes.remote(task, limit)

    @app.post(
        "/v1/tasks/{task}/demos",
        status_code=201,
        tags=["data"],
        **admin(400, 415, 404, 422),
    )
    async def import_demos(task: str, body: DemoImport) -> dict[str, Any]:
        """Import demonstrations from a folder the data server can read (all-or-nothing validation)."""
        await task_config(task)
        try:
            return await data.import_demos.remote(task, body.path, body.format, body.observation_keys)
        except ValueError as exc:  # DatasetImportError names the file and the problem
            raise HTTPException(422, str(exc)) from None

    @app.get("/v1/episodes/{episode_id}", tags=["data"], **admin(404))
    async def get_episode(episode_id: str) -> dict[str, Any]:
        try:
            return await data.episode_summary.remote(episode_id)
        except KeyError:
            raise HTTPException(404, f"no episode with id {episode_id!r}") from None

    @app.post(
        "/v1/episodes/{episode_id}/label",
        tags=["data"],
        **admin(400, 415, 404, 422),
    )
    async def label_episode(episode_id: str, body: EpisodeLabel) -> dict[str, Any]:
        """A human success/failure label; it replaces the episode's outcome for learning."""
        try:
            return await data.label.remote(episode_id, body.outcome, body.labelled_by)
        except KeyError:
            raise HTTPException(404, f"no episode with id {episode_id!r}") from None

    add_console(app)
    return app
