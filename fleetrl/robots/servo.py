"""A joint servo for torque-driven MuJoCo robots: the policy sends joint steps, the servo damps the motion.

Why: a real arm takes position targets and its motor controller closes the velocity loop far below the
policy. Gymnasium's MuJoCo robots (Reacher, ...) take raw torques instead, so a policy must damp the arm
itself from joint velocities, which a single camera frame does not show: a pixel policy cannot even
clone a controller that stops at its target. ``DampedJointServo`` puts that loop back where a real arm has
it. An action ``a`` in [-1, 1] per actuated joint asks for a step of ``a * max_step`` radians from the
joint's current angle; every environment step the servo applies the torque
``clip(kp * max_step * a - kd * joint_velocity)`` (the actuator's control range), reading the velocity
from the simulator as a motor's encoder would. The best action is then a function of positions only
(joint angles and the goal), which a camera shows.

Use it as a sim robot wrapper: ``SimRobot(..., wrappers=["fleetrl.robots.servo:DampedJointServo"])`` or
``fleetrl robot --sim Reacher-v5 --wrapper fleetrl.robots.servo:DampedJointServo``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class DampedJointServo(gym.ActionWrapper):
    """Wraps a gymnasium MuJoCo env whose actuators are motors on hinge or slide joints (see the module
    doc). ``kp``: torque per radian of asked step, ``kd``: torque per rad/s, ``max_step``: the step in
    radians of a full action. The defaults drive Reacher-v5 to its target in ~15 steps."""

    def __init__(self, env: Any, kp: float = 3.0, kd: float = 0.2, max_step: float = 0.5):
        super().__init__(env)
        model = getattr(env.unwrapped, "model", None)
        if model is None or not hasattr(model, "actuator_trnid"):
            raise ValueError(
                f"DampedJointServo needs a MuJoCo environment, got {type(env.unwrapped).__name__}"
            )
        joints = model.actuator_trnid[:, 0]
        if np.any(model.actuator_trntype != 0) or np.any(model.jnt_type[joints] < 2):
            raise ValueError("DampedJointServo drives motors on hinge or slide joints only")
        self.kp, self.kd, self.max_step = float(kp), float(kd), float(max_step)
        self.dofs = model.jnt_dofadr[joints]
        self.low, self.high = env.action_space.low, env.action_space.high
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(joints),), np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        """The motor torques for ``action`` at the simulator's current joint velocities."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        velocity = self.env.unwrapped.data.qvel[self.dofs]
        return np.clip(self.kp * self.max_step * a - self.kd * velocity, self.low, self.high).astype(
            np.float32
        )
