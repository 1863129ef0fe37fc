"""Registering and removing robots over the platform's REST API (``/v1/robots``), before and after they
talk to a gateway; httpx is imported only when called, so the control loop never needs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from fleetrl.robots.client.robot import Robot
from fleetrl.robots.protocol import specs_to_dict

log = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    """The platform refused (``status``: its HTTP status) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


RETRY_STATUS = frozenset({502, 503, 504})  # the platform is starting or restarting a part: worth waiting for
MAX_RETRY_S = 2.0  # a robot waiting for a starting platform registers within this of it answering


def register(
    api_url: str,
    admin_token: str,
    name: str,
    task: str,
    robot: Robot,
    timeout: float = 10.0,
    curve_public_key: str | None = None,
    wait_s: float = 120.0,
    gateway: int | None = None,
) -> dict[str, Any]:
    """Register a robot over REST; returns ``{robot_id, token, endpoint, endpoints, gateway, chunk_len,
    curve}``. ``curve_public_key``: the robot's own CURVE public key (its secret never leaves the robot);
    without it the platform issues a key pair and returns the secret once. ``gateway``: pin the robot to
    that gateway of a platform with several (default: the least loaded).

    A robot PC often boots before the head: while the platform cannot be reached, answers 502/503/504, or
    its HTTP proxy is up without the API yet (a plain-text 404), this retries with backoff (0.5 s doubling
    to ``MAX_RETRY_S``) for up to ``wait_s`` seconds, logging what it waits for; any other refusal (a wrong
    token, a spec the task does not accept) raises at once."""
    return _waiting_for_platform(
        api_url, f"registration of {name!r}", wait_s,
        lambda: _register_once(api_url, admin_token, name, task, robot, timeout, curve_public_key, gateway),
    )  # fmt: skip


def renew(
    api_url: str, robot_id: str, token: str, timeout: float = 10.0, curve_public_key: str | None = None,
    wait_s: float = 120.0,
) -> dict[str, Any]:  # fmt: skip
    """Renew a registered robot's credentials with its own token (no admin token): the same robot id, a new
    token and CURVE keys (the old ones stop working at once). Waits for a platform that is not up, as
    ``register`` does; a token the platform no longer accepts raises ``RegistrationError`` with its status."""
    body = {} if curve_public_key is None else {"curve_public_key": curve_public_key}
    url = f"{api_url.rstrip('/')}/v1/robots/{robot_id}/credentials"
    refused = f"renewal of robot {robot_id} refused"
    return _waiting_for_platform(
        api_url, f"renewal of robot {robot_id}", wait_s, lambda: _post(url, token, body, timeout, refused)
    )


def _waiting_for_platform(
    api_url: str, what: str, wait_s: float, call: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """``call()``, again with backoff (0.5 s doubling to ``MAX_RETRY_S``) for up to ``wait_s`` while the
    platform cannot be reached or is not ready, logging what it waits for."""
    import httpx

    deadline, delay = time.monotonic() + wait_s, 0.5
    while True:
        try:
            return call()
        except (httpx.TransportError, _Unavailable) as exc:
            if time.monotonic() + delay > deadline:
                raise RegistrationError(
                    f"{what}: the platform at {api_url} was not reachable for {wait_s:.0f} s (last: {exc})"
                ) from None
            log.warning("%s: waiting for the platform at %s (%s); retry in %.1f s", what, api_url, exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, MAX_RETRY_S)


class _Unavailable(Exception):
    """A 502/503/504 answer, or the proxy's 404 before the API is deployed: the platform is there but not
    ready."""


def _register_once(
    api_url: str,
    admin_token: str,
    name: str,
    task: str,
    robot: Robot,
    timeout: float,
    curve_public_key: str | None,
    gateway: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "task": task,
        "observation_spec": specs_to_dict(robot.observation_spec),
        "action_spec": robot.action_spec.to_dict(),
    }
    if curve_public_key is not None:
        body["curve_public_key"] = curve_public_key
    if gateway is not None:
        body["gateway"] = gateway
    # 200: the name was registered before (same id, new token)
    return _post(
        f"{api_url.rstrip('/')}/v1/robots", admin_token, body, timeout, f"registration of {name!r} failed"
    )


def _post(url: str, token: str, body: dict[str, Any], timeout: float, refused: str) -> dict[str, Any]:
    """POST ``body`` with a bearer token: the answer's JSON on 200/201; ``_Unavailable`` while the platform
    is not ready (``_waiting_for_platform`` retries); ``RegistrationError`` (``refused`` + status) else."""
    import httpx

    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    if r.status_code in RETRY_STATUS or _api_not_deployed(r):
        raise _Unavailable(f"{r.status_code} {r.text[:200]}")
    if r.status_code not in (200, 201):
        raise RegistrationError(f"{refused} ({r.status_code}): {r.text}", r.status_code)
    return r.json()


def _api_not_deployed(r: Any) -> bool:
    """A 404 that is not the API's own (its answers are JSON): Ray Serve's proxy is up but the platform's
    app is not deployed on it yet (a platform starting or restarting), so the route does not exist yet."""
    return r.status_code == 404 and not r.headers.get("content-type", "").startswith("application/json")


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
