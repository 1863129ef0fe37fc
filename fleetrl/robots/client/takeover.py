"""Human in the loop on the robot side: an operator takes over and hands back, demonstrations are
recorded through the SDK, and a ``Supervisor`` decides when (a person at a console, or the simulated
operator of ``fleetrl.robots.operator``).

Under human control the robot executes the operator's action every tick, records those steps as
interventions and asks the policy for nothing; every change of control goes to the gateway as a
``control`` frame, so it drops what it queued for the robot. Mixed into ``RobotClient``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from fleetrl.robots import protocol as P
from fleetrl.robots.client.robot import OperatorFn, Robot, StepResult
from fleetrl.robots.recorder import EpisodeLog, StepRecord


class Supervisor(Protocol):
    """Watches a robot's steps and may take over / hand back (a person at a console, or a simulated
    operator, ``fleetrl.robots.operator``). Called after every executed step and at every episode start."""

    def after_step(self, client: HumanControl, result: StepResult) -> None: ...

    def episode_started(self, client: HumanControl) -> None: ...


class HumanControl:
    """Take-over, hand-back and demonstrations of one robot, and the supervisor that watches it."""

    # Provided by the RobotClient this is mixed into.
    robot: Robot
    robot_id: str
    counters: dict[str, int]
    welcome: P.Welcome | None
    supervisor: Supervisor | None
    _operator: tuple[OperatorFn, str] | None  # (act, who) while a human has control
    _demos_left: int  # next episodes recorded as demonstrations (source "offline")
    _demo_operator: tuple[OperatorFn, str] | None
    _episode: EpisodeLog | None
    _step: int
    _obs: dict[str, np.ndarray] | None
    _current: Any
    _next: Any
    _request: Any
    _clock: Callable[[], float]
    _send: Callable[[P.Message, float], None]
    _maybe_request: Callable[[float], None]
    _after_step: Callable[[StepRecord, np.ndarray, StepResult, float], None]
    _clip: Callable[[np.ndarray], np.ndarray]

    @property
    def under_human_control(self) -> bool:
        return self._operator is not None

    def take_over(self, act: OperatorFn, operator: str = "human") -> None:
        """An operator takes control: from the next tick the robot executes ``act(observation)`` (a teleop
        device, a scripted oracle) and records those steps as interventions; queued policy chunks are
        dropped here and at the gateway, which sends nothing until ``hand_back``."""
        if self._operator is not None:
            self._operator = (act, operator)
            return
        self._operator = (act, operator)
        self._current = self._next = self._request = None
        self.counters["takeovers"] += 1
        self._send_control(self._clock())

    def hand_back(self) -> None:
        """The policy drives again from the current step; chunks computed before now are never executed."""
        if self._operator is None:
            return
        self._operator = None
        now = self._clock()
        self._send_control(now)
        self._maybe_request(now)

    def record_demos(self, act: OperatorFn, n: int = 1, operator: str = "human") -> None:
        """The next ``n`` episodes are demonstrations: ``act`` drives them from start to end, and they go
        to the task's demonstration buffer (source ``offline``), recorded and uploaded like any episode."""
        self._demos_left = n
        self._demo_operator = (act, operator)

    def _send_control(self, now: float) -> None:
        ep = self._episode
        who = self._operator[1] if self._operator else ""
        mode = "human" if self._operator else "autonomous"
        if self.welcome is not None:
            self._send(
                P.Control(
                    robot_id=self.robot_id,
                    episode_id=ep.episode_id if ep else "",
                    step=self._step if ep else 0,
                    mode=mode,
                    operator=who,
                ),
                now,
            )

    def _operator_step(self, now: float) -> None:
        """One tick under human control: the operator's action, recorded as an intervention."""
        assert self._operator is not None and self._obs is not None
        action = self._clip(np.asarray(self._operator[0](self._obs), dtype=np.float32))
        rec = StepRecord(self._step, self._step, now, now, -1, "", intervention=True)
        self.counters["interventions"] += 1
        self._after_step(rec, action, self.robot.act(action), now)

    def _episode_started(self) -> None:
        """A pending demonstration takes over the new episode for all of it; otherwise the supervisor
        hears of the start."""
        assert self._episode is not None
        if self._demos_left > 0:
            self._demos_left -= 1
            self._episode.source = "offline"
            self._episode.meta["demonstrator"] = self._demo_operator[1]
            self.counters["demos"] += 1
            self.take_over(*self._demo_operator)
        elif self.supervisor is not None:
            self.supervisor.episode_started(self)
