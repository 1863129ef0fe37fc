"""Registering and removing robots over the platform's REST API (``/v1/robots``), before and after they
talk to a gateway; httpx is imported only when called, so the control loop never needs it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fleetrl.robots.client.robot import Robot
from fleetrl.robots.protocol import specs_to_dict

log = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    pass


def register(
    api_url: str,
    admin_token: str,
    name: str,
    task: str,
    robot: Robot,
    timeout: float = 10.0,
    curve_public_key: str | None = None,
) -> dict[str, Any]:
    """Register a robot over REST; returns ``{robot_id, token, endpoint, chunk_len, curve}``.
    ``curve_public_key``: the robot's own CURVE public key (its secret never leaves the robot); without it
    the platform issues a key pair and returns the secret once."""
    import httpx

    body = {
        "name": name,
        "task": task,
        "observation_spec": specs_to_dict(robot.observation_spec),
        "action_spec": robot.action_spec.to_dict(),
    }
    if curve_public_key is not None:
        body["curve_public_key"] = curve_public_key
    r = httpx.post(
        f"{api_url.rstrip('/')}/v1/robots",
        json=body,
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=timeout,
    )
    if r.status_code != 201:
        raise RegistrationError(f"registration of {name!r} failed ({r.status_code}): {r.text}")
    return r.json()


def deregister(api_url: str, admin_token: str, robot_ids: Sequence[str], timeout: float = 5.0) -> None:
    """Best-effort removal of robots (e.g. simulated ones at shutdown); errors are logged, not raised."""
    import httpx

    for robot_id in robot_ids:
        try:
            httpx.delete(
                f"{api_url.rstrip('/')}/v1/robots/{robot_id}",
                headers={"Authorization": f"Bearer {admin_token}"},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("could not deregister %s: %s", robot_id, exc)
