"""Pending actions: their encoding, the gateway's check, the batch a replica gets, the policy input, and the
same input rebuilt from a stored episode (what PPO recomputes its log-probs on)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fleetrl.algorithms.ppo_decisions import episode_decisions
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots import protocol as P
from fleetrl.robots.pending import PENDING_KEY, check_pending, encode_pending, episode_pending
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.gateway.dispatch import stack_observations
from fleetrl.workers.task import TaskConfig

os.environ.setdefault("MUJOCO_GL", "egl")
ACT = ArraySpec((2,), "float32", -1.0, 1.0)


def test_pending_actions_are_right_aligned_with_a_flag_column():
    enc = encode_pending(np.array([[0.1, 0.2], [0.3, 0.4]], np.float32), 4, 2)
    np.testing.assert_allclose(enc, [[0, 0, 0], [0, 0, 0], [0.1, 0.2, 1], [0.3, 0.4, 1]])
    assert not encode_pending(None, 4, 2).any() and not encode_pending(np.zeros((0, 2)), 4, 2).any()


@pytest.mark.parametrize(
    "pending, why",
    [
        (np.zeros((5, 2), np.float32), "at most 4"),
        (np.zeros((2, 3), np.float32), "expected shape"),
        (np.zeros(2, np.float32), "expected shape"),
        (np.zeros((2, 2), np.int32), "float array"),
        (np.full((1, 2), np.nan, np.float32), "non-finite"),
    ],
)
def test_the_gateway_refuses_malformed_pending_actions(pending, why):
    with pytest.raises(P.ProtocolError, match=why) as err:
        check_pending(pending, ACT, 4)
    assert err.value.code == "bad_observation"


def test_episode_pending_skips_held_rows_and_keeps_the_last_chunk_len():
    from fleetrl.robots.episode import Episode, empty_columns

    cols = empty_columns(8)
    cols["held"][3] = True
    actions = np.arange(16, dtype=np.float32).reshape(8, 2)
    ep = Episode(
        "e", "t", "r", "success", {"s": np.zeros((8, 1), np.float32)}, actions, cols, {"s": np.zeros(1)}
    )
    np.testing.assert_array_equal(episode_pending(ep, 1, 5, 4), actions[[1, 2, 4]])
    np.testing.assert_array_equal(episode_pending(ep, 0, 7, 2), actions[[5, 6]])
    assert episode_pending(ep, 4, 4, 4).shape == (0, 2)


def test_a_replica_batch_carries_pending_actions_only_for_a_policy_that_reads_them():
    def task(pending: bool) -> TaskConfig:
        return TaskConfig(
            name="reach", observation={"state": {"shape": [3]}}, action={"shape": [2], "low": -1, "high": 1},
            chunk_len=4, policy={"family": "gaussian_mlp", "pending_actions": pending},
        )  # fmt: skip

    msgs = [
        P.Obs(robot_id="a", observation={"state": np.zeros(3, np.float32)}),
        P.Obs(
            robot_id="b", observation={"state": np.ones(3, np.float32)}, pending=np.ones((1, 2), np.float32)
        ),
    ]
    assert set(stack_observations(msgs, task(False))) == {"state"}
    batch = stack_observations(msgs, task(True))
    assert batch[PENDING_KEY].shape == (2, 4, 3)
    assert not batch[PENDING_KEY][0].any() and batch[PENDING_KEY][1, 3].tolist() == [1, 1, 1]


def test_a_pending_reading_policy_changes_its_chunk_with_them_and_reads_none_as_zeros():
    obs_spec = {"state": ArraySpec((3,), "float32")}
    policy = build_policy(GaussianMLPConfig(pending_actions=True, hidden=(8,)), obs_spec, ACT, 4)
    with torch.no_grad():
        policy.body[-1].weight.normal_()  # the head starts near zero; make the dependence visible
    obs = {"state": torch.ones(1, 3)}
    zeros = {**obs, PENDING_KEY: torch.zeros(1, 4, 3)}
    some = {**obs, PENDING_KEY: torch.from_numpy(encode_pending(np.ones((2, 2)), 4, 2)[None])}
    mean = policy.distribution
    assert torch.equal(mean(obs).mean, mean(zeros).mean)
    assert not torch.allclose(mean(obs).mean, mean(some).mean)


def test_ppo_rebuilds_the_pending_actions_each_chunk_was_asked_with():
    """The plain loop asks 2 steps early with the current chunk's tail, as the SDK does; the decisions PPO
    builds from the stored episode must give back the exact log-prob the robot was sent (a rebuilt input
    that differs by one action would not, as the policy reads them)."""
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.plain_loop import rollout_episodes

    robot = SimRobot("Reacher-v5", seed=0)
    policy = build_policy(GaussianMLPConfig(hidden=(8,), pending_actions=True), robot.observation_spec,
                          robot.action_spec, 4)  # fmt: skip
    with torch.no_grad():
        policy.body[-1].weight.normal_()
    (ep,) = rollout_episodes(robot, policy, 1, lookahead=2)
    d = episode_decisions([ep], 4, 0.99)
    assert d.obs[PENDING_KEY][1:, :2].abs().sum() == 0 and d.obs[PENDING_KEY][1:, 2:, -1].all()
    with torch.no_grad():
        recomputed = policy.log_prob(d.obs, d.actions, d.mask)
        blind = policy.log_prob({k: v for k, v in d.obs.items() if k != PENDING_KEY}, d.actions, d.mask)
    whole = d.mask.all(1)  # a chunk the episode's end cut short was sent with its unexecuted tail's log-prob
    assert whole[:-1].all()
    torch.testing.assert_close(recomputed[whole], d.reported_logp[whole], atol=1e-4, rtol=1e-5)
    assert (blind[1:][whole[1:]] - d.reported_logp[1:][whole[1:]]).abs().min() > 1e-3
