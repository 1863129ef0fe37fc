"""A simulated operator, so human-in-the-loop runs without people in tests and benchmarks.

``OracleOperator`` supervises one ``RobotClient`` driving an OGBench cube robot (``SimRobot``). It
watches the task's progress and takes over, driving with OGBench's scripted Markov oracle (which reads
privileged simulator state, as a person reads the scene), when

* progress stalls: it has not improved by ``min_progress`` for ``stall_steps`` steps (LWD §IV-C: the
  operator steps in when the robot is stuck), or
* the robot is about to fail: fewer than ``rescue_steps`` steps are left before the time limit, about
  what the oracle needs to finish from a fresh start.

It hands back after ``assist_steps`` steps of its own (or keeps control to the end when it stepped in to
rescue), so episodes mix autonomous steps and intervention segments as on a real fleet. Its progress
signal, from privileged state, is ``-(|effector - cube| + 2 |cube - goal|)``: the simulated stand-in for
the progress critic a platform operator would watch (``progress_fn`` replaces it). Every take-over and
hand-back goes through the SDK (``take_over``/``hand_back``), exactly as a teleoperation console would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fleetrl.robots.client import RobotClient, StepResult
from fleetrl.robots.demos import make_oracle, oracle_info
from fleetrl.robots.sim import SimRobot


def cube_progress(info: dict[str, Any]) -> float:
    """Privileged task progress of cube-single: grasp the cube (effector near it), bring it to the goal."""
    cube = np.asarray(info["privileged/block_0_pos"], dtype=np.float64)
    effector = np.asarray(info["proprio/effector_pos"], dtype=np.float64)
    goal = np.asarray(info["privileged/target_block_pos"], dtype=np.float64)
    return -float(np.linalg.norm(effector - cube) + 2.0 * np.linalg.norm(cube - goal))


class OracleOperator:
    """The ``Supervisor`` of one cube robot; attach with ``client.supervisor = OracleOperator(robot)``."""

    def __init__(
        self,
        robot: SimRobot,
        stall_steps: int = 30,
        min_progress: float = 0.01,
        assist_steps: int = 40,
        rescue_steps: int = 60,
        max_steps: int = 200,
        progress_fn: Callable[[dict[str, Any]], float] | None = None,
        name: str = "sim-operator",
    ):
        self.robot = robot
        self.stall_steps, self.min_progress = stall_steps, min_progress
        self.assist_steps, self.rescue_steps, self.max_steps = assist_steps, rescue_steps, max_steps
        self.progress_fn = progress_fn or (lambda info: cube_progress(oracle_info(robot.env, info)))
        self.name = name
        self.oracle = make_oracle(robot.env, "markov", 0.0)
        self.takeovers = 0
        self._oracle_episode = -1
        self._reset_episode()

    def _reset_episode(self) -> None:
        self.step = 0
        self.best = -np.inf
        self.since_best = 0
        self.assisted = 0
        self.rescuing = False

    # -- Supervisor ---------------------------------------------------------------------------------
    def episode_started(self, client: RobotClient) -> None:
        self._reset_episode()
        if client.under_human_control:
            client.hand_back()  # every episode starts autonomous

    def after_step(self, client: RobotClient, result: StepResult) -> None:
        self.step += 1
        progress = self.progress_fn(self.robot.last_info)
        if progress > self.best + self.min_progress:
            self.best, self.since_best = progress, 0
        else:
            self.since_best += 1
        if client.under_human_control:
            self.assisted += 1
            if not self.rescuing and self.assisted >= self.assist_steps:
                self.since_best, self.best = 0, progress  # give the policy a fresh chance from here
                client.hand_back()
            return
        about_to_fail = self.max_steps - self.step <= self.rescue_steps
        if self.since_best >= self.stall_steps or about_to_fail:
            self.rescuing = about_to_fail
            self.assisted = 0
            self.takeovers += 1
            self._oracle_episode = -1  # the oracle plans afresh from the current state
            client.take_over(self.act, self.name)

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:  # noqa: ARG002 - reads the simulator
        """The oracle's action for the simulator's current state (what the operator executes); usable
        on its own as the action source of ``client.record_demos``."""
        info = oracle_info(self.robot.env, self.robot.last_info)
        if self._oracle_episode != self.robot.episodes_started:  # first action of this episode
            self._oracle_episode = self.robot.episodes_started
            self.oracle.reset(None, info)
        action = self.oracle.select_action(None, info)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
