"""Human in the loop on the robot side: an operator takes over and hands back, demonstrations are
recorded through the SDK, and a ``Supervisor`` decides when (a person at a console, or the simulated
operator of ``fleetrl.robots.operator``).

Under human control the robot executes the operator's action every tick, records those steps as
interventions and asks the policy for nothing; every change of control goes to the gateway as a
``control`` frame, so it drops what it queued for the robot. The part holds who is in control; what
happens to the policy's chunks on a change is the owner's, through the callbacks it is built with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from fleetrl.robots import protocol as P
from fleetrl.robots.client.robot import OperatorFn, StepResult
from fleetrl.robots.recorder import EpisodeLog, StepRecord


class HumanControllable(Protocol):
    """What a supervisor may do with the robot it watches (``RobotClient`` provides it)."""

    @property
    def under_human_control(self) -> bool: ...

    def take_over(self, act: OperatorFn, operator: str = "human") -> None: ...

    def hand_back(self) -> None: ...


class Supervisor(Protocol):
    """Watches a robot's steps and may take over / hand back (a person at a console, or a simulated
    operator, ``fleetrl.robots.operator``). Called after every executed step and at every episode start."""

    def after_step(self, client: HumanControllable, result: StepResult) -> None: ...

    def episode_started(self, client: HumanControllable) -> None: ...


class HumanControl:
    """Take-over, hand-back and demonstrations of one robot.

    ``position()`` is (episode id, step) of the running episode (``("", 0)`` between episodes), for the
    ``control`` frames; ``on_take_over()`` drops the policy's queued chunks and request; ``on_hand_back(now)``
    asks the policy again. ``counters`` is the owner's table (``takeovers``, ``interventions``, ``demos``).
    """

    def __init__(
        self,
        robot_id: str,
        clock: Callable[[], float],
        send: Callable[[P.Message, float], None],
        connected: Callable[[], bool],
        position: Callable[[], tuple[str, int]],
        on_take_over: Callable[[], None],
        on_hand_back: Callable[[float], None],
        counters: dict[str, int],
    ):
        self.robot_id = robot_id
        self.counters = counters
        self._clock = clock
        self._send = send
        self._connected = connected
        self._position = position
        self._on_take_over = on_take_over
        self._on_hand_back = on_hand_back
        self._operator: tuple[OperatorFn, str] | None = None  # (act, who) while a human has control
        self._demos_left = 0  # next episodes recorded as demonstrations (source "offline")
        self._demo_operator: tuple[OperatorFn, str] | None = None

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
        self._on_take_over()
        self.counters["takeovers"] += 1
        self.send_control(self._clock())

    def hand_back(self) -> None:
        """The policy drives again from the current step; chunks computed before now are never executed."""
        if self._operator is None:
            return
        self._operator = None
        now = self._clock()
        self.send_control(now)
        self._on_hand_back(now)

    def record_demos(self, act: OperatorFn, n: int = 1, operator: str = "human") -> None:
        """The next ``n`` episodes are demonstrations: ``act`` drives them from start to end, and they go
        to the task's demonstration buffer (source ``offline``), recorded and uploaded like any episode."""
        self._demos_left = n
        self._demo_operator = (act, operator)

    def send_control(self, now: float) -> None:
        """Tell the gateway session (if there is one) who is in control from the current step."""
        if not self._connected():
            return
        episode_id, step = self._position()
        who = self._operator[1] if self._operator else ""
        mode = "human" if self._operator else "autonomous"
        self._send(
            P.Control(robot_id=self.robot_id, episode_id=episode_id, step=step, mode=mode, operator=who), now
        )

    def announce(self, now: float) -> None:
        """A (new) gateway session learns who is in control, once an operator ever took over."""
        if self._operator is not None or self.counters["takeovers"]:
            self.send_control(now)

    def operator_step(
        self, obs: dict[str, np.ndarray], step: int, now: float
    ) -> tuple[StepRecord, np.ndarray]:
        """One tick under human control: the operator's action for ``obs`` and its record, an intervention
        (the owner clips and executes the action)."""
        assert self._operator is not None
        action = np.asarray(self._operator[0](obs), dtype=np.float32)
        self.counters["interventions"] += 1
        return StepRecord(step, step, now, now, -1, "", intervention=True), action

    def episode_started(self, ep: EpisodeLog) -> bool:
        """A pending demonstration takes over the new episode for all of it (True); else False."""
        if self._demos_left <= 0:
            return False
        assert self._demo_operator is not None
        self._demos_left -= 1
        ep.source = "offline"
        ep.meta["demonstrator"] = self._demo_operator[1]
        self.counters["demos"] += 1
        self.take_over(*self._demo_operator)
        return True
