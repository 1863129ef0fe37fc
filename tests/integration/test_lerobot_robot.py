"""A robot with LeRobot's interface (fleetrl/testing/lerobot_like.py, shaped like LeRobot's ``Robot``)
through the real platform via ``LeRobotRobot``: it registers with its joint vector and camera, gets action
chunks from a replica, and its episodes (frames included) are stored."""

from __future__ import annotations

import numpy as np
import ray

from fleetrl.robots.client import RobotClient, register
from fleetrl.robots.lerobot_adapter import LeRobotRobot
from fleetrl.testing.lerobot_like import LeRobotLikeArm
from tests.conftest import ADMIN_TOKEN, delete_task, reacher_task
from tests.integration.helpers import FleetThread

TASK = reacher_task(
    "so-arm",
    observation={
        "state": {"shape": [2]},
        "front": {"shape": [32, 32, 3], "dtype": "uint8", "encoding": "jpeg"},
    },
)


def test_a_lerobot_shaped_arm_runs_as_a_fleet_robot(api, platform):
    assert api.post("/v1/tasks", json=TASK, timeout=120).status_code == 201
    try:
        arm = LeRobotLikeArm(side=32, seed=4)
        robot = LeRobotRobot(arm, control_hz=50, action_low=-1, action_high=1, episode_steps=20)
        client = RobotClient.from_registration(
            robot, register(platform.rest_url, ADMIN_TOKEN, "so-1", "so-arm", robot)
        )
        with FleetThread([client]) as fleet:
            fleet.wait_for(lambda: any(e.acked for e in client.episodes), timeout=60, what="an acked episode")
        fleet.assert_only_recovered_errors()
        assert fleet.total("replies") > 3
        assert len(arm.sent) >= 20  # every control period commanded the arm by joint name
        log = next(e for e in client.episodes if e.acked)
        stored = ray.get(platform.data.get_episode.remote(log.episode_id, client.robot_id))
        assert stored.observations["front"].shape == (20, 32, 32, 3) and stored.outcome == "timeout"
        np.testing.assert_allclose(
            stored.observations["state"], np.stack([o["state"] for o in log.observations])
        )
        robot.close()
        assert not arm.is_connected
    finally:
        delete_task(api, "so-arm")
