"""Human-in-the-loop pieces without a platform: the control and reset frames, failure points, the SDK
under human control, a simulator returning to a recorded state, and the simulated operator."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.robots import protocol as P
from fleetrl.robots.client import RobotClient
from fleetrl.robots.episode import Episode, empty_columns
from fleetrl.robots.operator import OracleOperator
from fleetrl.robots.sim import SimRobot
from fleetrl.testing.net import free_port
from fleetrl.workers.data.failure_states import FailureStates, failure_step

CUBE = "cube-single-singletask-task1-v0"


def test_control_and_reset_frames_round_trip_and_meta_is_checked():
    ctl = P.decode(P.encode(P.Control(robot_id="r", episode_id="e", step=3, mode="human", operator="alice")))
    assert isinstance(ctl, P.Control) and (ctl.mode, ctl.step, ctl.operator) == ("human", 3, "alice")
    acts = np.arange(10, dtype=np.float32).reshape(2, 5)
    rst = P.decode(
        P.encode(P.Reset(robot_id="r", state="recorded", episode_id="e", step=2, seed=7, actions=acts))
    )
    assert isinstance(rst, P.Reset) and rst.seed == 7 and np.array_equal(rst.actions, acts)
    with pytest.raises(P.ProtocolError, match="wrong type"):
        P.decode(P.pack({"v": 1, "kind": "control", "robot_id": "r", "step": "three"}))
    P.check_meta({"reset_seed": 3, "env": "x", "tags": [1, 2.0, "a"]})
    for bad in ({"nested": {"a": 1}}, {f"k{i}": i for i in range(40)}, {"s": "x" * 1000}):
        with pytest.raises(P.ProtocolError):
            P.check_meta(bad)


def test_failure_point_is_the_best_state_before_the_failure():
    assert failure_step(np.array([0.1, 0.3, 0.2, -0.1, -0.2]), cumulative=False) == 1  # dense: best state
    assert failure_step(np.array([0.2, 0.5, -0.1, -0.3, 0.0]), cumulative=True) == 1  # progress deltas
    assert failure_step(np.zeros(20), cumulative=False) == 14  # sparse: a quarter before the end


def _episode(outcome: str, meta: dict, n: int = 8, source: str = "online") -> Episode:
    cols = empty_columns(n)
    cols["reward"][:] = np.linspace(0, 1, n)[::-1]  # best state first
    return Episode("e-" + outcome + str(len(meta)), "t", "r", outcome, {"state": np.zeros((n, 2), np.float32)},
                   np.zeros((n, 1), np.float32), cols, {"state": np.zeros(2, np.float32)}, source=source,
                   meta=meta)  # fmt: skip


def test_failure_states_keep_only_replayable_failed_online_episodes():
    states = FailureStates(progress_rewards=False)
    assert states.add(_episode("failure", {"reset_seed": 1}))["step"] == 0
    assert states.add(_episode("success", {"reset_seed": 1})) is None
    assert states.add(_episode("timeout", {})) is None  # no seed: cannot be replayed
    assert states.add(_episode("failure", {"reset_seed": 1, "reset_from_episode": "x"})) is None
    assert states.add(_episode("failure", {"reset_seed": 1}, source="offline")) is None
    assert states.summary()["count"] == 1 and sum(states.histogram()) == 1
    assert states.sample()["episode_id"] == "e-failure1"


def _offline_client(robot: SimRobot) -> RobotClient:
    """A client whose gateway is not there: under human control the robot works without one."""
    return RobotClient(robot, "r1", "token", f"tcp://127.0.0.1:{free_port()}")


def test_under_human_control_the_operator_drives_and_steps_are_interventions():
    robot = SimRobot("Reacher-v5", seed=0)
    client = _offline_client(robot)
    try:
        client.take_over(lambda obs: np.array([0.5, -0.5], np.float32), operator="alice")
        for _ in range(60):  # Reacher episodes are 50 steps
            client.tick()
        ep = client.episodes[0]
        assert len(ep.steps) == 50 and all(s.intervention and s.policy_version == -1 for s in ep.steps)
        assert np.allclose(np.stack(ep.actions), [0.5, -0.5])
        assert client.counters["requests"] == 0 and client.counters["takeovers"] == 1
        client.hand_back()
        assert not client.under_human_control
    finally:
        client.close()
        robot.close()


def test_a_sim_robot_returns_exactly_to_a_recorded_state():
    robot = SimRobot(CUBE, seed=3, max_episode_steps=50)
    try:
        first = robot.reset()
        seed = robot.episode_meta()["reset_seed"]
        rng = np.random.default_rng(0)
        actions = rng.uniform(-1, 1, (30, 5)).astype(np.float32)
        states = [first["state"]] + [robot.act(a).observation["state"] for a in actions]
        back = robot.reset_to(
            P.Reset(robot_id="r", state="recorded", seed=seed, actions=actions[:20], step=20)
        )
        np.testing.assert_allclose(back["state"], states[20], atol=1e-6)
        for _ in range(45):  # the restored episode gets a full time budget (50 steps), not 30 left
            assert not robot.act(np.zeros(5, np.float32)).truncated
        with pytest.raises(ValueError, match="unknown state"):
            robot.reset_to(P.Reset(robot_id="r", state="kitchen"))
    finally:
        robot.close()


def test_the_simulated_operator_solves_the_cube_when_it_has_control():
    robot = SimRobot(CUBE, seed=0)
    client = _offline_client(robot)
    try:
        client.take_over(OracleOperator(robot).act, operator="oracle")
        for _ in range(200):
            client.tick()
            if client.episodes:
                break
        assert client.episodes and client.episodes[0].outcome == "success"
    finally:
        client.close()
        robot.close()
