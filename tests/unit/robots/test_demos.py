"""Demonstrations from OGBench's oracles and scripted policies: success, shapes, labels, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.robots.demos import (
    RandomPolicy,
    collect_oracle_demos,
    collect_scripted_demos,
    reacher_reach_policy,
)
from fleetrl.robots.sim import SimRobot

CUBE = "cube-single-singletask-task1-v0"


@pytest.fixture(scope="module")
def plan_demos():
    return collect_oracle_demos(CUBE, n=3, oracle="plan", seed=5, log_every=0)


def test_plan_oracle_demos_succeed_and_are_valid_episodes(plan_demos):
    assert len(plan_demos) == 3
    assert sum(ep.success for ep in plan_demos) >= 2
    spec = SimRobot(CUBE).observation_spec["state"]
    for ep in plan_demos:
        ep.validate()
        obs = ep.observations["state"]
        assert obs.dtype == np.float32 and obs.shape == (len(ep), *spec.shape) == (len(ep), 28)
        assert ep.final_observation["state"].shape == spec.shape
        assert ep.actions.shape == (len(ep), 5) and ep.actions.dtype == np.float32
        assert np.abs(ep.actions).max() <= 1.0
        assert ep.source == "offline" and ep.labelled_by == "robot" and ep.task == CUBE
        assert (ep.columns["policy_version"] == -1).all() and not ep.columns["intervention"].any()
        assert ep.meta["env_id"] == CUBE and ep.meta["oracle"] == "plan"
        assert ep.meta["noise"] == 0.1 and ep.meta["seed"] == 5
        if ep.success:
            assert ep.terminated and not ep.truncated and len(ep) < 200
        # observations chain: the final observation is the state after the last action
        assert not np.array_equal(ep.final_observation["state"], obs[-1])
    assert len({ep.episode_id for ep in plan_demos}) == 3


def test_oracle_demos_are_reproducible_and_leave_global_rng_alone(plan_demos):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    again = collect_oracle_demos(CUBE, n=1, oracle="plan", seed=5, log_every=0)
    assert np.array_equal(np.random.get_state()[1], before)
    assert again[0].episode_id == plan_demos[0].episode_id
    np.testing.assert_array_equal(again[0].observations["state"], plan_demos[0].observations["state"])
    other = collect_oracle_demos(CUBE, n=1, oracle="plan", seed=6, log_every=0)
    assert other[0].episode_id != plan_demos[0].episode_id


def test_markov_oracle_demos_and_progress_callback():
    seen = []
    eps = collect_oracle_demos(
        CUBE,
        n=2,
        oracle="markov",
        noise=0.1,
        seed=0,
        on_episode=lambda k, n, ep: seen.append((k, n, len(ep))),
    )
    assert [s[:2] for s in seen] == [(1, 2), (2, 2)]
    assert sum(ep.success for ep in eps) >= 1
    assert all(ep.meta["oracle"] == "markov" for ep in eps)


def test_oracle_argument_errors():
    with pytest.raises(ValueError, match="cube-single"):
        collect_oracle_demos("Reacher-v5", n=1)
    with pytest.raises(ValueError, match="unknown oracle"):
        collect_oracle_demos(CUBE, n=1, oracle="teleop")


def test_reacher_scripted_controller_reaches_the_target():
    eps = collect_scripted_demos("Reacher-v5", reacher_reach_policy, n=10, seed=11, log_every=0)
    assert all(ep.success for ep in eps), [ep.outcome for ep in eps]
    for ep in eps:
        ep.validate()
        assert len(ep) < 50 and not ep.truncated
        assert np.linalg.norm(ep.final_observation["state"][-3:-1]) < 0.02
        assert ep.observations["state"].shape == (len(ep), 10)
        assert ep.meta["policy"] == "reacher_reach_policy" and ep.source == "offline"
    # time columns follow the robot's control rate (20 Hz)
    np.testing.assert_allclose(np.diff(eps[0].columns["obs_time"]), 0.05)


def test_random_policy_episodes_time_out():
    spec = SimRobot("Reacher-v5").action_spec
    eps = collect_scripted_demos(
        "Reacher-v5", RandomPolicy(spec, seed=1), n=3, seed=0, max_steps=20, log_every=0
    )
    for ep in eps:
        ep.validate()
        assert ep.outcome in ("timeout", "success")
        if ep.outcome == "timeout":
            assert ep.truncated and len(ep) == 20
    assert any(ep.outcome == "timeout" for ep in eps)
