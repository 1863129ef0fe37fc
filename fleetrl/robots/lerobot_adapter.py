"""A robot with LeRobot's ``Robot`` interface as a fleetrl robot.

LeRobot drives real arms (SO-100/101, Koch, Reachy, ...) through one interface: ``connect()``,
``get_observation()`` -> a flat dict of floats (joint readings, e.g. ``"shoulder_pan.pos"``) and camera
frames (uint8 [H, W, 3]), ``send_action(dict of floats)`` -> the action actually sent (it may clip), and
``disconnect()``, with ``observation_features`` / ``action_features`` describing the keys (``float`` for a
scalar, a shape tuple for a camera). ``LeRobotRobot`` maps that onto what the SDK needs (``Robot`` in
``fleetrl.robots.client``): the scalars in ``observation_features`` order become one float32 ``state``
vector, each camera its own uint8 key, the action features one float32 vector in their order.

What LeRobot's interface does not say, the caller does: the control rate, the action bounds, how long an
episode lasts, what counts as success, and the reward (0 unless ``reward_fn`` gives one; the platform's
reward models usually score episodes instead). ``hold()`` keeps the arm where it is: it commands the
joints' current positions where every action key has a reading of the same name (the ``.pos`` convention),
else repeats the last command. Numpy only; LeRobot itself is not imported (the robot object is).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fleetrl.robots.client.robot import StepResult
from fleetrl.robots.protocol import ArraySpec

ObsFn = Callable[[dict[str, np.ndarray]], Any]


def _key(name: str) -> str:
    """A camera's observation key: LeRobot's name with anything but letters, digits, '_' and '-' as '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


class LeRobotRobot:
    """``robot`` (LeRobot ``Robot`` interface) with the fleetrl ``Robot`` interface; see the module doc."""

    def __init__(
        self,
        robot: Any,
        control_hz: float,
        action_low: float | None = None,
        action_high: float | None = None,
        episode_steps: int | None = None,
        success_fn: ObsFn | None = None,
        reward_fn: ObsFn | None = None,
    ):
        if not control_hz > 0:
            raise ValueError(f"control_hz must be positive, got {control_hz}")
        self.robot, self.control_hz = robot, float(control_hz)
        features = dict(robot.observation_features)
        self.state_names = [k for k, v in features.items() if not isinstance(v, tuple)]
        self.cameras = {k: tuple(int(d) for d in v) for k, v in features.items() if isinstance(v, tuple)}
        bad = {k: v for k, v in self.cameras.items() if len(v) != 3 or v[2] not in (1, 3)}
        if bad:
            raise ValueError(f"camera features must be (height, width, 1 or 3), got {bad}")
        self.action_names = list(robot.action_features)
        if not self.action_names:
            raise ValueError("the robot declares no action features")
        spec: dict[str, ArraySpec] = {}
        if self.state_names:
            spec["state"] = ArraySpec((len(self.state_names),), "float32")
        keys = {name: _key(name) for name in self.cameras}
        if len(set(keys.values())) != len(keys) or "state" in keys.values():
            raise ValueError(f"camera names {sorted(self.cameras)} collide as observation keys {keys}")
        spec |= {keys[name]: ArraySpec(shape, "uint8") for name, shape in self.cameras.items()}
        self.camera_keys = keys
        self.observation_spec = spec
        self.action_spec = ArraySpec((len(self.action_names),), "float32", action_low, action_high)
        self.episode_steps, self.success_fn, self.reward_fn = episode_steps, success_fn, reward_fn
        self._steps, self._last_action = 0, None
        self._last_reading: Mapping[str, Any] = {}

    def _observe(self) -> dict[str, np.ndarray]:
        reading = self.robot.get_observation()
        missing = [k for k in (*self.state_names, *self.cameras) if k not in reading]
        if missing:
            raise KeyError(f"get_observation() lacks declared features {missing}")
        self._last_reading = reading
        out = {}
        if self.state_names:
            out["state"] = np.array([float(reading[k]) for k in self.state_names], np.float32)
        for name, key in self.camera_keys.items():
            frame = np.asarray(reading[name], dtype=np.uint8)
            out[key] = frame.reshape(self.cameras[name])
        return out

    def reset(self) -> dict[str, np.ndarray]:
        """Connects on first use; a new episode starts where the arm is (a real arm has no reset)."""
        if not getattr(self.robot, "is_connected", False):
            self.robot.connect()
        self._steps = 0
        return self._observe()

    def _send(self, action: np.ndarray) -> None:
        values = np.asarray(action, np.float32).reshape(len(self.action_names))
        self.robot.send_action({k: float(v) for k, v in zip(self.action_names, values, strict=True)})
        self._last_action = values

    def _step(self, action: np.ndarray) -> StepResult:
        self._send(
            action
        )  # what LeRobot sent may be clipped; the episode keeps the command (no intervention)
        obs = self._observe()
        self._steps += 1
        success = bool(self.success_fn(obs)) if self.success_fn else False
        reward = float(self.reward_fn(obs)) if self.reward_fn else 0.0
        truncated = self.episode_steps is not None and self._steps >= self.episode_steps
        return StepResult(obs, reward, success, truncated and not success, success)

    def act(self, action: np.ndarray) -> StepResult:
        return self._step(action)

    def hold(self) -> StepResult:
        """Command the current joint readings where every action key has one, else repeat the last action
        (before any action: the readings, or zeros if there are none)."""
        if all(k in self._last_reading for k in self.action_names):
            pose = np.array([float(self._last_reading[k]) for k in self.action_names], np.float32)
        elif self._last_action is not None:
            pose = self._last_action
        else:
            pose = np.zeros(len(self.action_names), np.float32)
        return self._step(pose)

    def close(self) -> None:
        if getattr(self.robot, "is_connected", False):
            self.robot.disconnect()
