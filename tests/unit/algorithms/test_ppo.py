"""PPO maths on hand cases; episodes -> decisions; old log-probs recomputed by the producing version."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from fleetrl.algorithms.base import PolicySpec, algorithm_class, build_algorithm
from fleetrl.algorithms.batch import EpisodeBatch
from fleetrl.algorithms.ppo import PPO, PPOConfig
from fleetrl.algorithms.ppo_decisions import episode_decisions
from fleetrl.algorithms.ppo_math import (
    RewardScale,
    approx_kl,
    discounted_running_return,
    gae,
    ppo_clip_loss,
    ratio_quantiles,
    tis_weights,
    value_loss,
)
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.episode import Episode, empty_columns
from fleetrl.robots.protocol import ArraySpec

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)

G = 0.9
OBS = {"state": ArraySpec((3,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)


def make_episode(versions, obs_steps, logp_rows, h=3, terminated=False, seed=0) -> Episode:
    """An episode whose row t has reward t + 1 and action (t / 10, -t / 10); observations are random."""
    n = len(versions)
    rng = np.random.default_rng(seed)
    cols = empty_columns(n)
    cols["policy_version"][:] = versions
    cols["obs_step"][:] = obs_steps
    cols["reward"][:] = np.arange(n) + 1.0
    for t in logp_rows:
        cols["log_prob"][t] = -1.0 - t
    actions = np.stack([np.arange(n) / 10, -np.arange(n) / 10], 1).astype(np.float32)
    return Episode(
        episode_id=f"ep{seed}",
        task="t",
        robot_id="r",
        outcome="failure" if terminated else "timeout",
        observations={"state": rng.standard_normal((n, 3)).astype(np.float32)},
        actions=actions,
        columns=cols,
        final_observation={"state": rng.standard_normal(3).astype(np.float32)},
        terminated=terminated,
        truncated=not terminated,
    )


# rows: 0-1 a v0 chunk from obs 0 (an operator takes row 2; row 3 is the chunk's resumed tail, no decision),
# 4-5 a v1 chunk conditioned on obs 3 (lag), 6 a v1 chunk from obs 5 cut short by the episode's end.
VERSIONS = [0, 0, -1, 0, 1, 1, 1]
OBS_STEPS = [0, 0, 2, 0, 3, 3, 5]
LOGP_ROWS = [0, 4, 6]


def test_gae_hand_case_truncated_terminated_and_variable_discounts():
    lam = 0.8
    # episode A (truncated): two chained decisions of 4 and 2 steps, bootstrap V(final) = 0.3;
    # episode B (terminated): one decision of 3 steps, its next value must be ignored.
    rewards = torch.tensor([1.0, 2.0, 3.0])
    values = torch.tensor([0.5, 0.4, 1.0])
    next_values = torch.tensor([0.4, 0.3, 7.0])
    discounts = torch.tensor([G**4, G**2, G**3])
    dones = torch.tensor([False, False, True])
    ends = torch.tensor([False, True, True])
    adv, ret = gae(rewards, values, next_values, discounts, dones, ends, lam)
    a2 = 2.0 + G**2 * 0.3 - 0.4
    a1 = (1.0 + G**4 * 0.4 - 0.5) + G**4 * lam * a2
    assert adv.tolist() == pytest.approx([a1, a2, 3.0 - 1.0], rel=1e-6)
    assert ret.tolist() == pytest.approx([a1 + 0.5, a2 + 0.4, 3.0], rel=1e-6)
    # lambda = 1 and zero values: the discounted return with the truncation bootstrap
    adv, _ = gae(rewards, torch.zeros(3), torch.tensor([0.0, 0.3, 7.0]), discounts, dones, ends, 1.0)
    assert adv[0].item() == pytest.approx(1.0 + G**4 * (2.0 + G**2 * 0.3), rel=1e-6)


def test_ppo_clip_loss_and_fraction_on_hand_numbers():
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, frac = ppo_clip_loss(ratios.log(), torch.zeros(4), adv, 0.2)
    # min(r A, clip(r) A): 1.2, 0.5, -1.1, -0.8
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 1.1 - 0.8) / 4, rel=1e-6)
    assert frac.item() == pytest.approx(0.75)
    assert approx_kl(torch.ones(3), torch.ones(3)).item() == 0.0
    assert approx_kl(ratios.log(), torch.zeros(4)).item() > 0
    v, old, ret = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])
    assert value_loss(v, ret).item() == pytest.approx(0.5)
    # clipped prediction 0.5 errs by 0.5, unclipped by 1: the max (1) is kept; and vice versa
    assert value_loss(v, ret, old, 0.5).item() == pytest.approx(0.5)
    assert value_loss(v, torch.tensor([3.0]), old, 0.5).item() == pytest.approx(0.5 * 2.5**2)


def test_episode_decisions_chunks_lag_interventions_and_cut_short_chunks():
    ep = make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)
    d = episode_decisions([ep], chunk_len=3, gamma=G)
    assert len(d) == 3
    assert d.version.tolist() == [0, 1, 1]
    assert d.mask.tolist() == [[True, True, False], [True, True, False], [True, False, False]]
    obs = ep.observations["state"]
    np.testing.assert_array_equal(d.obs["state"].numpy(), obs[[0, 3, 5]])
    # d0 is broken off by the operator (bootstrap at row 2); d1 chains into d2; d2 bootstraps from the end
    np.testing.assert_array_equal(d.next_obs["state"][0].numpy(), obs[2])
    np.testing.assert_array_equal(d.next_obs["state"][1].numpy(), obs[5])
    np.testing.assert_array_equal(d.next_obs["state"][2].numpy(), ep.final_observation["state"])
    assert d.chain_end.tolist() == [True, False, True]
    assert d.done.tolist() == [False, False, False]
    assert d.reward.tolist() == pytest.approx([1 + G * 2, 5 + G * 6, 7])
    assert d.discount.tolist() == pytest.approx([G**2, G**2, G])
    assert d.reported_logp.tolist() == [-1.0, -5.0, -7.0]
    # the unexecuted tail repeats the last executed action
    assert d.actions[1, :, 0].tolist() == pytest.approx([0.4, 0.5, 0.5])
    assert d.actions[2, :, 0].tolist() == pytest.approx([0.6, 0.6, 0.6])
    ended = episode_decisions([ep, make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS, terminated=True)], 3, G)
    assert ended.done.tolist() == [False, False, False, False, False, True]
    assert len(episode_decisions([], 3, G)) == 0


def small_ppo(**overrides) -> PPO:
    policy = build_policy(GaussianMLPConfig(hidden=(16,), value_hidden=(16,)), OBS, ACT, 3)
    cfg = PPOConfig(**{"epochs": 1, "batch_size": 4, "steps_per_update": 1, **overrides})
    return PPO(cfg, policy, PolicySpec(OBS, ACT, 3, G))


def test_old_log_probs_are_recomputed_by_the_producing_version_and_evicted_versions_dropped():
    ppo = small_ppo(history=2, max_version_lag=1)
    ppo.published(0)
    w0 = {k: v.clone() for k, v in ppo.policy.state_dict().items()}
    with torch.no_grad():
        ppo.policy.body[-1].bias.add_(0.5)
        ppo.policy.log_std.add_(0.3)
    ppo.published(1)
    w1 = {k: v.clone() for k, v in ppo.policy.state_dict().items()}
    with torch.no_grad():
        ppo.policy.body[-1].bias.add_(0.5)  # the live weights are neither version
    d = episode_decisions([make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)], 3, G)
    got = ppo.recompute_log_probs(d)
    reference = build_policy(GaussianMLPConfig(hidden=(16,), value_hidden=(16,)), OBS, ACT, 3)
    for weights, rows in ((w0, [0]), (w1, [1, 2])):
        reference.load_state_dict(weights)
        sel = d.select(torch.tensor(rows))
        want = reference.log_prob(sel.obs, sel.actions, sel.mask)
        torch.testing.assert_close(got[rows], want.detach())
    assert not torch.allclose(got[0], ppo.policy.log_prob(d.obs, d.actions, d.mask)[0])
    ppo.published(2)  # evicts version 0
    assert list(ppo.history) == [1, 2]
    metrics = ppo.update(EpisodeBatch([make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)], [0], 0))
    assert metrics["dropped_stale"] == 1 and metrics["decisions"] == 2
    assert all(math.isfinite(metrics[k]) for k in ("policy_loss", "value_loss", "approx_kl", "entropy"))


def test_masked_tail_does_not_change_the_log_prob():
    ppo = small_ppo()
    ppo.published(0)
    ppo.published(1)
    d = episode_decisions([make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)], 3, G)
    before = ppo.recompute_log_probs(d)
    d.actions[2, 1:] = torch.tensor([0.9, -0.9])  # change the unexecuted steps of the cut-short chunk
    torch.testing.assert_close(ppo.recompute_log_probs(d), before)
    one_step = ppo.policy.log_prob(d.obs, d.actions[:, :1].repeat(1, 3, 1), torch.tensor([[1, 0, 0]] * 3))
    torch.testing.assert_close(before[2], one_step[2].detach())


def test_logprob_gap_is_zero_for_plain_loop_rollouts_and_cut_short_chunks_are_masked():
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.plain_loop import rollout_episodes

    robot = SimRobot("Reacher-v5", seed=3)
    spec = PolicySpec(robot.observation_spec, robot.action_spec, 4, 0.99)
    policy = build_policy(GaussianMLPConfig(), spec.observation_spec, spec.action_spec, 4)
    ppo = PPO(PPOConfig(epochs=1, steps_per_update=64), policy, spec)
    ppo.published(0)
    torch.manual_seed(0)
    episodes = rollout_episodes(robot, policy, 3)
    d = episode_decisions(episodes, 4, 0.99)
    assert int(d.mask.sum()) == sum(len(e) for e in episodes)  # every executed step in exactly one chunk
    assert not d.mask.all()  # 50 steps in chunks of 4: each episode's last chunk is cut short
    metrics = ppo.update(EpisodeBatch(episodes, [0, 0, 0], 0))
    assert metrics["logprob_gap"] < 1e-4 and metrics["reported_clip_fraction"] == 0.0
    assert metrics["decisions"] == len(d) and metrics["dropped_stale"] == 0
    assert metrics["mean_return"] == pytest.approx(np.mean([e.columns["reward"].sum() for e in episodes]))


def test_state_dict_round_trip_config_checks_and_registry():
    ppo = small_ppo()
    ppo.published(0)
    ppo.update(EpisodeBatch([make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)], [0], 0))
    ppo.published(1)
    other = small_ppo()
    other.load_state_dict(ppo.state_dict())
    assert list(other.history) == [0, 1]
    assert other.optimizer.state_dict()["state"].keys() == ppo.optimizer.state_dict()["state"].keys()
    assert ppo.batch_request().kind == "episodes" and ppo.batch_request().max_version_lag == 2
    with pytest.raises(ValueError, match="history"):
        PPOConfig(history=2, max_version_lag=2)
    assert algorithm_class("ppo") is PPO
    with pytest.raises(ValueError, match="gaussian_mlp"):
        build_algorithm("ppo", {}, ppo.policy, ppo.spec, "flow_chunk")


def test_tis_weights_are_capped_and_rows_without_a_behaviour_log_prob_weigh_one():
    proximal = torch.tensor([0.0, 0.0, 0.0, 0.0])
    behaviour = torch.tensor([0.0, -1.0, 1.0, float("nan")])  # ratios 1, e, 1/e, unknown
    w, capped = tis_weights(proximal, behaviour, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([1.0, 2.0, math.exp(-1.0), 1.0]))
    assert capped == pytest.approx(0.25)
    q = ratio_quantiles(torch.log(torch.tensor([0.5] * 10 + [1.0] * 80 + [2.0] * 10)), "r")
    assert (
        q["r_p01"] == pytest.approx(0.5)
        and q["r_p50"] == pytest.approx(1.0)
        and q["r_p99"] == pytest.approx(2.0)
    )


def _reacher_rollouts(seed: int):
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.plain_loop import rollout_episodes

    robot = SimRobot("Reacher-v5", seed=seed)
    spec = PolicySpec(robot.observation_spec, robot.action_spec, 4, 0.99)
    policy = build_policy(GaussianMLPConfig(), spec.observation_spec, spec.action_spec, 4)
    torch.manual_seed(seed)
    return spec, policy, rollout_episodes(robot, policy, 4)


@pytest.mark.parametrize("anchor", ["recompute", "bypass"])
def test_bypass_anchor_clips_a_mismatched_backends_data_and_recomputation_does_not(anchor):
    """A backend whose reported log-probs are off by ~N(0, 0.5) (vLLM-like, VLAC §3.2.1): anchored on them,
    PPO's first-epoch ratios are spread and clipped from the start; recomputed, they start at exactly 1."""
    spec, policy, episodes = _reacher_rollouts(seed=5)
    rng = np.random.default_rng(0)
    for ep in episodes:
        lp = ep.columns["log_prob"]
        lp[np.isfinite(lp)] += rng.normal(0, 0.5, np.isfinite(lp).sum()).astype(lp.dtype)
    cfg = PPOConfig(epochs=1, lr=1e-7, steps_per_update=64, anchor=anchor, tis_cap=2.0, proximal="producing")
    ppo = PPO(cfg, policy, spec)
    ppo.published(0)
    m = ppo.update(EpisodeBatch(episodes, [0] * len(episodes), 0))
    assert 0.5 < m["mismatch_ratio_p50"] < 2 and m["mismatch_ratio_p99"] / m["mismatch_ratio_p01"] > 3
    assert m["logprob_gap_max"] > m["logprob_gap"] > 0.2
    assert 0.0 <= m["tis_capped_fraction"] < 0.5 and 0 < m["tis_weight_mean"] <= 2.0
    if anchor == "recompute":
        assert m["clip_fraction_first_epoch"] == 0.0 and m["bypass_coverage"] == 0.0
        assert m["ratio_p01"] == pytest.approx(1.0, abs=1e-3) and m["ratio_p99"] == pytest.approx(
            1.0, abs=1e-3
        )
    else:
        assert m["clip_fraction_first_epoch"] > 0.4 and m["bypass_coverage"] > 0.8
        assert m["ratio_p99"] / m["ratio_p01"] > 3


@pytest.mark.parametrize("numerics", ["bf16", "int8"])
def test_torch_fast_backend_reports_log_probs_that_differ_from_the_fp32_recomputation(numerics):
    from fleetrl.workers.inference.backends import build_backend

    spec, policy, episodes = _reacher_rollouts(seed=6)
    kwargs = dict(policy=GaussianMLPConfig(), observation_spec=spec.observation_spec)
    kwargs |= dict(action_spec=spec.action_spec, chunk_len=4)
    fast = build_backend("torch-fast", **kwargs, fast_numerics=numerics)
    exact = build_backend("torch", **kwargs)
    obs = {"state": episodes[0].observations["state"][:32]}
    actions, reported, versions = fast.infer(obs)
    assert actions.dtype == np.float32 and reported.dtype == np.float32 and (versions == 0).all()
    fp32 = exact.policies[0].log_prob({"state": torch.from_numpy(obs["state"])}, torch.from_numpy(actions))
    gap = np.abs(reported - fp32.detach().numpy())
    assert gap.max() > 1e-4  # cheaper numerics: the reported log-probs are not the learner's
    assert np.isfinite(reported).all() and (np.abs(actions) <= 1).all()
    with pytest.raises(ValueError, match="unknown inference backend"):
        build_backend("tensorrt", **kwargs)


def held_episode(versions, obs_steps, logp_rows, held_rows, terminated=False) -> Episode:
    """``make_episode`` with the robot's hold at ``held_rows`` (zero action, version and obs_step -1)."""
    ep = make_episode(versions, obs_steps, logp_rows, terminated=terminated)
    ep.columns["held"][held_rows] = True
    ep.actions[held_rows] = 0.0
    return ep


def test_holds_after_a_late_chunk_count_for_the_decision_before_them_and_keep_the_chain():
    # rows 0-2: a v0 chunk from obs 0; rows 3-4 held (the next chunk was late); rows 5-7: the v0 chunk asked
    # for at step 2 (lagged observation); the episode is truncated after row 7
    ep = held_episode([0, 0, 0, -1, -1, 0, 0, 0], [0, 0, 0, -1, -1, 2, 2, 2], [0, 5], [3, 4])
    d = episode_decisions([ep], chunk_len=3, gamma=G)
    assert len(d) == 2 and d.mask.all()
    r = np.arange(8) + 1.0
    assert d.reward.tolist() == pytest.approx(
        [sum(G**k * r[k] for k in range(5)), r[5] + G * r[6] + G**2 * r[7]]
    )
    assert d.discount.tolist() == pytest.approx([G**5, G**3])  # held time counts in the discount
    assert d.chain_end.tolist() == [False, True]  # the holds do not break the chain
    obs = ep.observations["state"]
    np.testing.assert_array_equal(d.next_obs["state"][0].numpy(), obs[2])  # the next decision's state
    np.testing.assert_array_equal(d.next_obs["state"][1].numpy(), ep.final_observation["state"])
    # the held zero actions are not the policy's: the decisions' actions are the executed chunk rows only
    np.testing.assert_allclose(d.actions[:, :, 0].numpy(), [[0.0, 0.1, 0.2], [0.5, 0.6, 0.7]], rtol=1e-6)


def test_a_hold_inside_a_chunk_keeps_the_chunk_one_decision():
    # the link is lost after row 1: rows 2-3 held, then the same v0 chunk resumes at row 4 (its third action);
    # row 5 starts the next chunk, which the episode's end cuts short
    ep = held_episode([0, 0, -1, -1, 0, 1], [0, 0, -1, -1, 0, 4], [0, 5], [2, 3])
    d = episode_decisions([ep], chunk_len=3, gamma=G)
    assert len(d) == 2 and d.mask.tolist() == [[True] * 3, [True, False, False]]
    np.testing.assert_allclose(d.actions[0, :, 0].numpy(), [0.0, 0.1, 0.4], rtol=1e-6)
    assert d.reward[0].item() == pytest.approx(sum(G**k * (k + 1.0) for k in range(5)))
    assert d.discount.tolist() == pytest.approx([G**5, G])
    assert d.chain_end.tolist() == [False, True] and d.version.tolist() == [0, 1]
    # the log-prob is the executed chunk's: the held rows' actions do not enter it
    ppo = small_ppo()
    ppo.published(0)
    ppo.published(1)
    want = ppo.recompute_log_probs(d)
    ep.actions[[2, 3]] = 0.9  # whatever the hold did
    torch.testing.assert_close(ppo.recompute_log_probs(episode_decisions([ep], 3, G)), want)


@pytest.mark.parametrize("terminated", [False, True])
def test_holds_at_the_end_of_an_episode_bootstrap_from_the_final_observation_unless_terminated(terminated):
    ep = held_episode([0, 0, -1, -1], [0, 0, -1, -1], [0], [2, 3], terminated=terminated)
    d = episode_decisions([ep], chunk_len=2, gamma=G)
    assert len(d) == 1 and d.done.tolist() == [terminated] and d.chain_end.tolist() == [True]
    assert d.reward[0].item() == pytest.approx(1 + 2 * G + 3 * G**2 + 4 * G**3)
    assert d.discount[0].item() == pytest.approx(G**4)
    np.testing.assert_array_equal(d.next_obs["state"][0].numpy(), ep.final_observation["state"])
    # the truncated one's return bootstraps V(final) over the held time; the terminated one's does not
    v = torch.tensor([0.5])
    adv, _ = gae(d.reward, v, torch.tensor([2.0]), d.discount, d.done, d.chain_end, 0.95)
    want = d.reward[0].item() + (0.0 if terminated else G**4 * 2.0) - 0.5
    assert adv.item() == pytest.approx(want, rel=1e-6)


def test_hold_fraction_and_stale_decisions_do_not_join_the_chains_of_kept_ones():
    # three chained v0 / v1 / v2 chunks; version 1 is no longer kept, so its decision is dropped, but the
    # v0 decision's advantage still flows through it (GAE over the episode as it happened, then the drop)
    ep = held_episode([0, 0, -1, 1, 1, 2, 2, -1], [0, 0, -1, 1, 1, 3, 3, -1], [0, 3, 5], [2, 7])
    ppo = small_ppo(normalize_advantages=False, history=3, max_version_lag=2)
    for v in (0, 1, 2):
        ppo.published(v)
    d = episode_decisions([ep], 3, G)
    with torch.no_grad():
        values, next_values = ppo.policy.value(d.obs), ppo.policy.value(d.next_obs)
    adv, _ = gae(d.reward, values, next_values, d.discount, d.done, d.chain_end, ppo.config.gae_lambda)
    del ppo.history[1]
    seen = []
    minibatch = ppo._minibatch
    ppo._minibatch = lambda sel, old, a, *rest: (seen.append(a.clone()), minibatch(sel, old, a, *rest))[1]
    metrics = ppo.update(EpisodeBatch([ep], [0], 0))
    assert metrics["dropped_stale"] == 1 and metrics["decisions"] == 2
    assert metrics["hold_fraction"] == pytest.approx(2 / 8)
    got = torch.cat(seen)
    assert sorted(got.tolist()) == pytest.approx(sorted(adv[[0, 2]].tolist()), rel=1e-5)


def test_a_ppo_update_folds_the_batch_into_the_policys_observation_statistics():
    """After an update (not before: the batch's old log-probs are of the statistics it acted with)."""
    policy = build_policy(
        GaussianMLPConfig(hidden=(16,), value_hidden=(16,), normalize_obs=True), OBS, ACT, 3
    )
    ppo = PPO(PPOConfig(epochs=1, batch_size=4, steps_per_update=1), policy, PolicySpec(OBS, ACT, 3, G))
    ppo.published(0)
    ppo.published(1)
    ep = make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)
    ep.observations["state"] += 100.0
    ppo.update(EpisodeBatch([ep], [0], 0))
    seen = ep.observations["state"][[0, 3, 5]]  # the decisions' observations
    np.testing.assert_allclose(policy.obs_norm.mean.numpy()[:3], seen.mean(0), rtol=1e-3)
    assert ppo.history[0]["obs_norm.count"].item() < 1e-3  # the kept version has the statistics it acted with


def test_reward_scale_is_the_std_of_the_discounted_return_so_far_over_every_step():
    """Against a direct computation: G_t = sum_k<=t gamma^(t-k) r_k per episode, std over all steps of all
    batches seen (gymnasium's RunningMeanStd starts from var 1 with count 1e-4, a negligible prior)."""
    rng = np.random.default_rng(0)
    episodes = [rng.normal(3.0, 2.0, n) for n in (40, 7, 120)]
    direct = [
        np.array([sum(G ** (t - k) * r[k] for k in range(t + 1)) for t in range(len(r))]) for r in episodes
    ]
    np.testing.assert_allclose(discounted_running_return(episodes[0], G), direct[0], rtol=1e-12)
    scale = RewardScale(G)
    scale.observe(episodes[:2])
    scale.observe(episodes[2:])
    assert scale.std == pytest.approx(np.concatenate(direct).std(), rel=1e-4)
    other = RewardScale(G)
    other.load_state_dict(scale.state_dict())
    assert other.std == scale.std


def test_normalize_rewards_divides_every_decisions_reward_and_checkpoints_its_statistics(monkeypatch):
    seen = {}
    real_gae = gae

    def spy(rewards, *args):
        seen.setdefault("rewards", []).append(rewards.clone())
        return real_gae(rewards, *args)

    monkeypatch.setattr("fleetrl.algorithms.ppo.gae", spy)
    ep = make_episode(VERSIONS, OBS_STEPS, LOGP_ROWS)
    raw = episode_decisions([ep], 3, G).reward
    plain, scaled = small_ppo(), small_ppo(normalize_rewards=True)
    for ppo in (plain, scaled):
        ppo.published(0)
        ppo.published(1)
        ppo.update(EpisodeBatch([ep], [0], 0))
    std = RewardScale(G)
    std.observe([ep.columns["reward"]])
    torch.testing.assert_close(seen["rewards"][0], raw)
    torch.testing.assert_close(seen["rewards"][1], raw / std.std)
    assert "reward_scale" not in plain.state_dict()
    restored = small_ppo(normalize_rewards=True)
    restored.load_state_dict(scaled.state_dict())
    assert restored.reward_scale.std == scaled.reward_scale.std != 1.0


def test_decisions_more_than_max_version_lag_behind_are_dropped_even_while_their_weights_are_kept():
    """History keeps 4 versions for recomputation; the lag (1) decides what trains: at v3 the v1 chunk
    (rows 0-1) leaves after GAE, the v2 and v3 chunks stay."""
    ppo = small_ppo(history=4, max_version_lag=1)
    for v in range(4):
        ppo.published(v)
    ep = make_episode([1, 1, 2, 2, 3, 3], [0, 0, 2, 2, 4, 4], [0, 2, 4])
    metrics = ppo.update(EpisodeBatch([ep], [0], 0))
    assert metrics["dropped_stale"] == 1.0 and metrics["decisions"] == 2.0


def stale_and_fresh_ppo(proximal: str, fresh: bool) -> tuple[PPO, dict]:
    """A PPO whose policy moved between v0 and v1, updated (one minibatch, one epoch) on an episode acted
    by v1 (fresh) or v0 (one version stale); returns it and the update's metrics."""
    ppo = small_ppo(proximal=proximal, batch_size=64, lr=1e-3)
    ppo.published(0)
    with torch.no_grad():
        ppo.policy.body[-1].bias.add_(0.4)
        ppo.policy.log_std.add_(0.3)
    ppo.published(1)
    v = 1 if fresh else 0
    ep = make_episode([v] * 6, [0, 0, 0, 3, 3, 3], [0, 3], h=3)
    return ppo, ppo.update(EpisodeBatch([ep], [0], 0))


def test_proximal_current_is_the_producing_anchor_on_fresh_rows_bit_for_bit():
    (a, ma), (b, mb) = stale_and_fresh_ppo("current", True), stale_and_fresh_ppo("producing", True)
    for (name, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert ma["staleness_weight_mean"] == 1.0 and ma["policy_loss"] == mb["policy_loss"]


def test_proximal_current_clips_stale_rows_around_the_current_weights_and_weights_them_towards_it():
    """Decoupled PPO: acted by v0, learned at v1. Around the producing version the first minibatch's ratios
    start where v1 already is (clipped, no gradient); around the current weights they start at 1 and each row
    carries min(pi_v1 / pi_v0, cap)."""
    ppo, current = stale_and_fresh_ppo("current", False)
    _, producing = stale_and_fresh_ppo("producing", False)
    assert current["ratio_p01"] == current["ratio_p99"] == 1.0
    assert current["clip_fraction_first_epoch"] == 0.0 < producing["clip_fraction_first_epoch"]
    assert (
        current["staleness_weight_mean"] != 1.0
        and current["staleness_weight_mean"] <= ppo.config.staleness_cap
    )


@pytest.mark.parametrize("lookahead", [0, 2, 4])
def test_the_plain_loops_lookahead_conditions_each_chunk_on_the_observation_that_many_steps_before_it(
    lookahead,
):
    """As the SDK's prefetch does: chunk i > 0 starts at 4 i and acts on observation 4 i - lookahead."""
    from fleetrl.robots.sim import SimRobot
    from fleetrl.testing.plain_loop import rollout_episodes

    robot = SimRobot("Reacher-v5", seed=0)
    policy = build_policy(GaussianMLPConfig(hidden=(8,)), robot.observation_spec, robot.action_spec, 4)
    (ep,) = rollout_episodes(robot, policy, 1, lookahead=lookahead)
    starts = np.arange(0, len(ep), 4)
    want = np.repeat(np.maximum(starts - lookahead, 0) * (starts > 0), 4)[: len(ep)]
    np.testing.assert_array_equal(ep.columns["obs_step"], want)
    d = episode_decisions([ep], 4, G)
    assert len(d) == len(starts) and not d.chain_end[:-1].any()  # one chain: every chunk follows the last
