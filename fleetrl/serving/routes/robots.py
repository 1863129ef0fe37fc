"""Robots over REST: register one (its credentials), list and inspect them with their live gateway state,
ask one to reset, and delete one (its token is revoked at the gateway)."""

from __future__ import annotations

import zlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from fleetrl.workers.gateway.curve import is_curve_key
from fleetrl.workers.gateway.gateways import robot_gateway
from fleetrl.workers.task import spec_mismatch

from ..auth import robot_token
from ..dependencies import Services, ServicesDep
from ..errors import actor_refusal, checked, missing_as_404, refusals
from ..models import (
    CredentialRenewal,
    CurveCredentials,
    ResetAnswer,
    ResetRequest,
    RobotCredentials,
    RobotRecord,
    RobotRegistration,
)

router = APIRouter(tags=["robots"])
robot_router = APIRouter(tags=["robots"])  # authenticated by the robot's own token, not the admin's


async def live_robots(svc: Services) -> dict[str, dict[str, Any]]:
    """The gateway's view of each connected robot, by id; empty when the gateway does not answer."""
    try:
        stats = await svc.gateway.stats.remote()
    except Exception:  # noqa: BLE001 - registry data is still worth returning
        return {}
    return {r["robot_id"]: r for r in stats["robots"]}


def with_live(robot: dict[str, Any], live: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A registry row with whether the robot is online, who controls it, and its gateway stats."""
    row = live.get(robot["robot_id"])
    control = row.get("control", "autonomous") if row else "autonomous"
    return {**robot, "online": bool(row and row["online"]), "control": control, "stats": row}


def no_robot(robot_id: str) -> str:
    return f"no robot with id {robot_id!r}"


@router.post("/v1/robots", status_code=201, responses=refusals(400, 415, 404, 409, 422))
async def register_robot(svc: ServicesDep, body: RobotRegistration, response: Response) -> RobotCredentials:
    """Register a robot (201), or re-register a name already registered for the task (200: same
    robot_id, a new token and CURVE keys, the robot's old session and credentials revoked). A name
    registered for another task, or a CURVE key that is another robot's, is refused (409)."""
    credentials = await issue_credentials(svc, body)
    if credentials.reregistered:
        response.status_code = 200
    return credentials


async def token_owner(
    svc: ServicesDep, robot_id: str, token: Annotated[str, Depends(robot_token)]
) -> dict[str, Any]:
    """The robot ``robot_id`` if the request carries its token, else 403 (checked before the body is read)."""
    robot = await svc.registry.verify.remote(robot_id, token)
    if robot is None:
        raise HTTPException(403, f"not the token of robot {robot_id!r} (revoked, or the robot was deleted)")
    return robot


@robot_router.post(
    "/v1/robots/{robot_id}/credentials", responses=refusals(401, 403, 404, 409, 422)
)  # fmt: skip
async def renew_credentials(
    svc: ServicesDep, body: CredentialRenewal, robot: Annotated[dict[str, Any], Depends(token_owner)]
) -> RobotCredentials:
    """A robot renews its own credentials with its current token (a robot PC that keeps a credentials file
    needs no admin token after its first registration): same robot_id and history, a new token and CURVE
    keys, the old ones revoked at once."""
    again = RobotRegistration(
        name=robot["name"], task=robot["task"], observation_spec=robot["observation_spec"],
        action_spec=robot["action_spec"], curve_public_key=body.curve_public_key,
    )  # fmt: skip
    return await issue_credentials(svc, again)


async def issue_credentials(svc: Services, body: RobotRegistration) -> RobotCredentials:
    """Registration itself (the route's, and the sim robots an evaluation starts): check the robot's specs
    against the task, record it, revoke a re-registered robot's old session, and hand out its credentials."""
    task = await svc.task_config(body.task)
    obs = {k: v.model_dump(exclude_none=True) for k, v in body.observation_spec.items()}
    act = body.action_spec.model_dump(exclude_none=True)
    problem = spec_mismatch(task, obs, act)
    if problem:
        raise HTTPException(422, problem)
    if body.curve_public_key is not None and not is_curve_key(body.curve_public_key):
        raise HTTPException(422, "curve_public_key: not a Z85-encoded 32-byte CURVE key")
    count = len(svc.robot_endpoints)
    if body.gateway is not None and body.gateway >= count:
        raise HTTPException(
            422, f"gateway: {body.gateway} is not one of the {count} gateways (0..{count - 1})"
        )
    live = [0] if count == 1 else await svc.gateway.live.remote()
    try:
        rec = await svc.registry.register_robot.remote(
            body.name, body.task, obs, act, body.curve_public_key, gateways=live or None, gateway=body.gateway
        )
    except ValueError as exc:  # the key is another robot's, or the name another task's
        raise HTTPException(409, actor_refusal(exc)) from None
    if rec["reregistered"]:
        await svc.gateway.revoke.remote(rec["robot_id"])  # the old token's session ends now
    curve = None
    if svc.robot_server_key is not None:
        curve = CurveCredentials(
            server_key=svc.robot_server_key,
            public_key=rec["curve_public_key"],
            secret_key=rec.get("curve_secret_key"),
        )
    fields = {k: rec[k] for k in ("robot_id", "name", "task", "token")}
    own = robot_gateway(rec["gateway"], count)
    endpoints = gateway_order(svc.robot_endpoints, own, rec["robot_id"])
    return RobotCredentials(
        **fields,
        endpoint=endpoints[0],
        endpoints=endpoints,
        gateway=own,
        chunk_len=task.chunk_len,
        curve=curve,
        reregistered=rec["reregistered"],
    )


def gateway_order(endpoints: list[str], own: int, robot_id: str) -> list[str]:
    """The robot's own gateway's endpoint first, then the others in an order of the robot's own (a rotation
    by a hash of its id), so the robots of a gateway that stops answering spread over the others."""
    others = [e for k, e in enumerate(endpoints) if k != own]
    turn = zlib.crc32(robot_id.encode()) % len(others) if others else 0
    return [endpoints[own], *others[turn:], *others[:turn]]


@router.get("/v1/robots", response_model=list[RobotRecord])
async def list_robots(svc: ServicesDep, task: str | None = None) -> list[dict[str, Any]]:
    live = await live_robots(svc)
    return [with_live(r, live) for r in await svc.registry.list_robots.remote(task)]


@router.get("/v1/robots/{robot_id}", response_model=RobotRecord, responses=refusals(404))
async def get_robot(svc: ServicesDep, robot_id: str) -> dict[str, Any]:
    with missing_as_404(no_robot(robot_id)):
        robot = await svc.registry.get_robot.remote(robot_id)
    return with_live(robot, await live_robots(svc))


@router.get(
    "/v1/robots/{robot_id}/camera",
    responses={**refusals(404, 422), 200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    response_class=Response,
)
async def camera_frame(svc: ServicesDep, robot_id: str, key: str | None = None) -> Response:
    """The latest camera frame a connected robot sent with an observation, as a JPEG or PNG file
    (``key``: which camera; default its task's first). ``X-Frame-Time`` is when it arrived (Unix seconds).
    404 while the robot is not connected or has sent no frame; 422 for a key that is not a camera."""
    with missing_as_404(no_robot(robot_id)):
        await svc.registry.get_robot.remote(robot_id)
    frame = checked(await svc.gateway.camera_frame.remote(robot_id, key))
    headers = {
        "X-Frame-Time": f"{frame['time']:.3f}",
        "X-Camera-Key": frame["key"],
        "Cache-Control": "no-store",
    }
    return Response(content=frame["data"], media_type=frame["media_type"], headers=headers)


@router.post(
    "/v1/robots/{robot_id}/reset", response_model=ResetAnswer, responses=refusals(400, 415, 404, 409, 422)
)
async def reset_robot(svc: ServicesDep, robot_id: str, body: ResetRequest) -> dict[str, Any]:
    """Ask a connected robot to start its next episode from a state (sim robots restore it; real
    robots receive it as an operator instruction). 409 if the robot is offline."""
    with missing_as_404(no_robot(robot_id)):
        await svc.registry.get_robot.remote(robot_id)
    result = await svc.gateway.request_reset.remote(robot_id, body.model_dump(exclude_none=True))
    return checked(result, keep_ok=True)


@router.delete("/v1/robots/{robot_id}", status_code=204, responses=refusals(404))
async def delete_robot(svc: ServicesDep, robot_id: str) -> Response:
    with missing_as_404(no_robot(robot_id)):
        await svc.registry.delete_robot.remote(robot_id)
    await svc.gateway.revoke.remote(robot_id)
    return Response(status_code=204)
