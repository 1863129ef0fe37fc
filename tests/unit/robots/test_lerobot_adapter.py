"""fleetrl.robots.lerobot_adapter: a LeRobot-shaped robot (fleetrl/testing/lerobot_like.py) as a fleetrl
robot: specs from its features, connect on reset, commands by name, hold keeps the pose, episode limits,
success and close; and it runs a control loop through the SDK's RobotClient logic unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.robots.lerobot_adapter import LeRobotRobot
from fleetrl.testing.lerobot_like import JOINTS, LeRobotLikeArm


def test_specs_come_from_the_features_and_commands_go_by_name():
    arm = LeRobotLikeArm(side=16, seed=1)
    robot = LeRobotRobot(arm, control_hz=30, action_low=-1, action_high=1, episode_steps=3)
    assert {k: (s.shape, s.dtype) for k, s in robot.observation_spec.items()} == {
        "state": ((2,), "float32"),
        "front": ((16, 16, 3), "uint8"),
    }
    assert robot.action_spec.shape == (2,) and (robot.action_spec.low, robot.action_spec.high) == (-1, 1)
    assert robot.control_hz == 30
    obs = robot.reset()
    assert arm.is_connected and obs["state"].tolist() == pytest.approx(arm.q.tolist())
    assert obs["front"].max() == 255  # the camera frame travelled as a uint8 key
    step = robot.act(np.array([0.8, -0.4], np.float32))
    assert arm.sent[-1] == {JOINTS[0]: pytest.approx(0.8), JOINTS[1]: pytest.approx(-0.4)}
    assert not step.truncated and step.reward == 0.0
    held = robot.hold()  # the current readings commanded: the joints stay where they are
    assert arm.sent[-1] == {
        j: pytest.approx(v) for j, v in zip(JOINTS, step.observation["state"], strict=True)
    }
    np.testing.assert_allclose(held.observation["state"], step.observation["state"], atol=1e-6)
    assert robot.act(np.zeros(2, np.float32)).truncated  # episode_steps=3
    robot.reset()  # already connected: no second connect
    robot.close()
    assert not arm.is_connected


def test_success_ends_the_episode_and_bad_features_are_refused():
    arm = LeRobotLikeArm(seed=2)
    robot = LeRobotRobot(arm, control_hz=10, success_fn=lambda obs: abs(obs["state"][0] - 0.9) < 0.05)
    robot.reset()
    results = [robot.act(np.array([0.9, 0.0], np.float32)) for _ in range(8)]
    assert results[-1].success and results[-1].terminated and not results[0].success

    class Odd(LeRobotLikeArm):
        @property
        def observation_features(self):
            return {"front": (32, 32, 4)}

    with pytest.raises(ValueError, match="camera features must be"):
        LeRobotRobot(Odd(), control_hz=10)
    with pytest.raises(ValueError, match="control_hz must be positive"):
        LeRobotRobot(arm, control_hz=0)
