"""Return-and-explore, the gateway's third part: send a robot back to a named or recorded state.

``request_reset`` (REST: ``POST /v1/robots/{id}/reset``) resolves what the robot should do and sends it a
``reset`` frame: a named state goes as is; a recorded one (an episode and step, or ``failure``: a failure
point the data server recorded for the robot's task) goes with the stored episode's reset seed and the
actions it executed up to that step, which is what a simulator needs to replay its way there (a real
robot hands the request to its operator). After every committed episode a task's
``return_and_explore.failure_fraction`` is the chance that the robot's next episode starts from a sampled
failure point instead of its usual reset (per-task reset-point sampling).

It is given the robot table, the data server (``sample_failure_state``,
``get_episode``), ``send`` for the ``reset`` frame and the random draws of reset-point sampling.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fleetrl.robots import protocol as P

if TYPE_CHECKING:
    from fleetrl.workers.gateway.session import RobotState

log = logging.getLogger(__name__)


class ResetError(ValueError):
    """A reset that cannot be done; ``code`` is the HTTP status the REST layer answers with."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class ResetRequests:
    """Resolves reset requests (REST, or sampled after an episode) into ``reset`` frames to robots."""

    def __init__(
        self,
        robots: dict[str, RobotState],
        data: Any | None,
        send: Callable[[bytes, P.Message], None],
        rng: random.Random,
    ):
        self.robots = robots
        self.data = data
        self.send = send
        self.rng = rng

    async def request(self, robot_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """``{"state": name}``, ``{"episode_id", "step"}`` or ``{"failure": true}``. Returns what was sent,
        or ``{"ok": False, "code", "error"}``."""
        try:
            return await self._reset(robot_id, request)
        except ResetError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}

    async def _reset(self, robot_id: str, request: dict[str, Any]) -> dict[str, Any]:
        state = self.robots.get(robot_id)
        if state is None or not state.online or state.ident is None:
            raise ResetError(409, f"robot {robot_id!r} is not connected")
        if request.get("failure"):
            point = await self.data.sample_failure_state.remote(state.task.name)
            if point is None:
                raise ResetError(404, f"no failure state recorded for task {state.task.name!r} yet")
            request = {"episode_id": point["episode_id"], "step": point["step"]}
        if request.get("episode_id") is None:
            msg = P.Reset(robot_id=robot_id, state=str(request.get("state") or "initial"))
        else:
            msg = await self._recorded(state, str(request["episode_id"]), int(request.get("step") or 0))
        msg.request_id = uuid.uuid4().hex[:12]
        self.send(state.ident, msg)
        log.info("gateway: robot %s asked to reset to %s (%s)", robot_id, msg.state, msg.episode_id or "-")
        return {"ok": True, "robot_id": robot_id, "state": msg.state, "episode_id": msg.episode_id,
                "step": msg.step, "request_id": msg.request_id}  # fmt: skip

    async def _recorded(self, state: RobotState, episode_id: str, step: int) -> P.Reset:
        try:
            episode = await self.data.get_episode.remote(episode_id)
        except Exception as exc:  # noqa: BLE001 - KeyError inside the actor: no such episode
            raise ResetError(404, f"no episode {episode_id!r}: {type(exc).__name__}") from None
        if episode.task != state.task.name:
            raise ResetError(409, f"episode {episode_id!r} is of task {episode.task!r}, the robot's is "
                                  f"{state.task.name!r}")  # fmt: skip
        if not 0 <= step < len(episode):
            raise ResetError(422, f"step must be in [0, {len(episode)}) for episode {episode_id!r}")
        seed = episode.meta.get("reset_seed")
        if not isinstance(seed, int) or episode.meta.get("reset_from_episode"):
            raise ResetError(409, f"episode {episode_id!r} cannot be replayed (no reset seed, or it began "
                                  "from a restored state)")  # fmt: skip
        return P.Reset(robot_id=state.robot_id, state="recorded", episode_id=episode_id, step=step, seed=seed,
                       actions=episode.actions[:step].copy())  # fmt: skip

    async def maybe_explore(self, state: RobotState) -> None:
        """Per-task reset-point sampling: after a committed episode, maybe restart at a failure point."""
        fraction = state.task.return_and_explore.failure_fraction
        if fraction <= 0 or self.rng.random() >= fraction:
            return
        try:
            await self._reset(state.robot_id, {"failure": True})
        except ResetError as exc:
            log.debug("gateway: no return-and-explore reset for %s: %s", state.robot_id, exc)
