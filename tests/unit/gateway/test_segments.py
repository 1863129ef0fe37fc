"""Segments of running episodes (``gateway/segments.py``): cut only where a chunk starts, every executed row
in exactly one piece, and PPO's decisions over the pieces are the whole episode's, with a bootstrap from
the cut row's observation where a piece ends; asynchronous chunks bring their observation along as context.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fleetrl.algorithms.base import PolicySpec
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.algorithms.ppo import PPO, PPOConfig, batch_stats
from fleetrl.algorithms.ppo_decisions import episode_decisions
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.episode import Episode
from fleetrl.workers.data.rewards import with_rewards
from fleetrl.workers.gateway.segments import chunk_starts, next_cut, segment

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)
CHUNK = 4


def pieces(ep: Episode, min_rows: int) -> list[Episode]:
    """``ep`` cut as the gateway cuts it when its rows arrive one by one (the last piece at its end)."""
    out, start = [], 0
    while (cut := next_cut(ep.columns, start, min_rows)) is not None:
        out.append(segment(ep.episode_id, ep.task, ep.robot_id, ep.observations, ep.actions, ep.columns,
                           start, cut))  # fmt: skip
        start = cut
    out.append(segment(ep.episode_id, ep.task, ep.robot_id, ep.observations, ep.actions, ep.columns, start,
                       len(ep), ep))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def rollouts():
    """Reacher-v5 episodes whose chunks are conditioned on the observation 2 steps before they start (the
    SDK's prefetch: pending actions), with a PPO that has published the producing weights."""
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.plain_loop import rollout_episodes

    robot = SimRobot("Reacher-v5", seed=5)
    spec = PolicySpec(robot.observation_spec, robot.action_spec, CHUNK, 0.99)
    policy = build_policy(GaussianMLPConfig(), spec.observation_spec, spec.action_spec, CHUNK)
    ppo = PPO(PPOConfig(epochs=1, steps_per_update=64), policy, spec)
    ppo.published(0)
    torch.manual_seed(5)
    return ppo, rollout_episodes(robot, policy, 2, lookahead=2)


def test_cuts_fall_on_chunk_starts_and_every_row_is_in_one_piece(rollouts):
    _, episodes = rollouts
    ep = episodes[0]
    parts = pieces(ep, 10)
    assert len(parts) >= 4  # 50 rows, at least 10 per piece
    firsts = [p.meta["first_row"] for p in parts]
    assert firsts[0] == 0 and all(chunk_starts(ep.columns)[f] for f in firsts)
    assert all(b - a >= 10 for a, b in zip(firsts, firsts[1:], strict=False))
    own = [p.actions[p.meta["context_rows"] :] for p in parts]
    np.testing.assert_array_equal(np.concatenate(own), ep.actions)  # each executed row once, in order
    for p, nxt in zip(parts, firsts[1:], strict=False):  # a cut piece bootstraps from the cut row
        assert p.truncated and not p.terminated and p.outcome == "aborted"
        np.testing.assert_array_equal(p.final_observation["state"], ep.observations["state"][nxt])
    last = parts[-1]
    assert (last.outcome, last.terminated, last.truncated) == (ep.outcome, ep.terminated, ep.truncated)
    assert last.meta["episode_return"] == pytest.approx(float(ep.columns["reward"].sum()))
    assert batch_stats(EpisodeBatch(parts, [0] * len(parts), 0))["mean_return"] == pytest.approx(
        float(ep.columns["reward"].sum())
    )


def test_asynchronous_chunks_bring_their_observation_as_context_that_no_learner_counts(rollouts):
    _, episodes = rollouts
    parts = pieces(episodes[0], 10)
    with_context = [p for p in parts if p.meta["context_rows"] > 0]
    assert with_context  # lookahead 2: a piece's first chunk was asked for 2 rows before the cut
    for p in with_context:
        k = p.meta["context_rows"]
        assert (p.columns["policy_version"][:k] == -1).all() and np.isnan(p.columns["log_prob"][:k]).all()
        assert (p.columns["reward"][:k] == 0).all()
        assert p.columns["obs_step"][k] == 0  # shifted: the chunk's observation is the piece's first row


def test_ppo_decisions_over_the_pieces_are_the_whole_episodes(rollouts):
    ppo, episodes = rollouts
    whole = episode_decisions(episodes, CHUNK, 0.99)
    parts = [p for ep in episodes for p in pieces(ep, 10)]
    cut = episode_decisions(parts, CHUNK, 0.99)
    assert len(cut) == len(whole) and int(cut.mask.sum()) == sum(len(e) for e in episodes)
    for name in ("actions", "mask", "reward", "discount", "reported_logp", "version", "done"):
        torch.testing.assert_close(getattr(cut, name), getattr(whole, name))
    for key in whole.obs:  # the decision's state and its pending actions, rebuilt inside each piece
        torch.testing.assert_close(cut.obs[key], whole.obs[key])
    # where a piece was cut the chain ends there and bootstraps from the cut row's state
    assert int(cut.chain_end.sum()) == int(whole.chain_end.sum()) + len(parts) - len(episodes)
    # the recomputed behaviour log-probs are the robot's exactly (pending actions and context rows intact);
    # a chunk the episode's end cut short is reported for all its actions and recomputed for those it ran
    full = cut.mask.all(1)
    assert 0 < int((~full).sum()) <= len(episodes)
    torch.testing.assert_close(ppo.recompute_log_probs(cut)[full], cut.reported_logp[full], atol=1e-4, rtol=0)


def test_reward_schemes_score_pieces_as_the_whole_episode():
    from fleetrl.robots.episode import empty_columns

    n = 12
    cols = empty_columns(n)
    cols["policy_version"][:] = 0
    cols["obs_step"][:] = np.repeat(np.arange(0, n, CHUNK), CHUNK)
    cols["log_prob"][::CHUNK] = -1.0
    ep = Episode("e", "t", "r", "failure", {"state": np.zeros((n, 3), np.float32)},
                 np.zeros((n, 2), np.float32), cols, {"state": np.zeros(3, np.float32)}, terminated=True)  # fmt: skip
    parts = pieces(ep, CHUNK)
    assert len(parts) == 3
    whole = with_rewards(ep, "aloe", c_fail=50.0).columns["reward"]
    cut = np.concatenate([with_rewards(p, "aloe", c_fail=50.0).columns["reward"] for p in parts])
    np.testing.assert_array_equal(cut, whole)  # -1 per step, -C_fail only on the episode's last row
    assert [with_rewards(p, "aloe", c_fail=50.0).terminated for p in parts] == [False, False, True]
