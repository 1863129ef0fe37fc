"""What the SDK needs from a robot, real or simulated: its specs, ``reset``/``act``/``hold``, and the
``StepResult`` of one control period; and what an operator's action source looks like."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from fleetrl.robots.protocol import ArraySpec


class StepResult(NamedTuple):
    observation: dict[str, np.ndarray]
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    # Set when an operator overrode the commanded action: what was actually executed (an intervention).
    executed_action: np.ndarray | None = None


class Robot(Protocol):
    """What a robot (real or simulated) provides to the SDK."""

    observation_spec: dict[str, ArraySpec]
    action_spec: ArraySpec
    control_hz: float  # control periods per second: the SDK ticks the robot at this rate

    def reset(self) -> dict[str, np.ndarray]: ...

    def act(self, action: np.ndarray) -> StepResult: ...

    def hold(self) -> StepResult:
        """Keep the robot safe for one control period (sim: a zero action)."""
        ...


OperatorFn = Callable[[dict[str, np.ndarray]], np.ndarray]  # observation -> the action the operator executes
