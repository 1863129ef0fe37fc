"""ALOE/AWR maths (eqs. 7-11), the Polyak step, one update's bookkeeping and the state round trip; BC's mask
and offline filter."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from fleetrl.algorithms.awr import (
    AWR,
    AWRConfig,
    awr_weights,
    binary_weights,
    policy_value,
)
from fleetrl.algorithms.base import PolicySpec, build_algorithm, parse_config
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.bc import BC, BCConfig
from fleetrl.algorithms.chunk_algorithm import chunk_tensors
from fleetrl.algorithms.data_value import episode_folds, expectile_loss
from fleetrl.algorithms.td import ensemble_td_loss, n_step_chunk_target, pessimistic_q, polyak_update
from fleetrl.models.critics import ChunkQConfig
from fleetrl.models.flow import FlowChunkConfig, FlowChunkPolicy, flow_matching_loss
from fleetrl.robots.protocol import ArraySpec

torch.set_num_threads(1)

OBS = {"state": ArraySpec((3,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)
H = 3
SPEC = PolicySpec(OBS, ACT, H, gamma=0.9)


def make_policy(seed: int = 0) -> FlowChunkPolicy:
    torch.manual_seed(seed)
    return FlowChunkPolicy(FlowChunkConfig(hidden=(16,), flow_steps=2, seed=seed), OBS, ACT, H)


def small_awr(seed: int = 0, **kw) -> AWR:
    kw.setdefault("bc_steps", 0)  # no warm start unless a test asks for one (the default is 1000)
    cfg = AWRConfig(seed=seed, critic=ChunkQConfig(n_critics=3, hidden=(16, 16)), n_policy_samples=2, **kw)
    return AWR(cfg, make_policy(seed), SPEC)


def make_batch(b: int = 8, seed: int = 0, offline: np.ndarray | None = None) -> ChunkBatch:
    rng = np.random.default_rng(seed)
    mask = np.ones((b, H), bool)
    mask[0, 2:] = False
    return ChunkBatch(
        obs={"state": rng.normal(size=(b, 3)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (b, H, 2)).astype(np.float32),
        rewards=rng.normal(size=(b, H)).astype(np.float32),
        chunk_reward=rng.normal(size=b).astype(np.float32),
        next_obs={"state": rng.normal(size=(b, 3)).astype(np.float32)},
        done=np.arange(b) % 4 == 0,
        mask=mask,
        discount=np.full(b, 0.9**H, np.float32),
        intervention=np.zeros(b, bool),
        offline=np.ones(b, bool) if offline is None else offline,
        robot_id=np.array(["r"] * b),
        episode_id=np.array(["e"] * b),
        step=np.zeros(b, np.int32),
        snapshot=1,
        gamma=0.9,
    )


def test_awr_weights_clip_at_eps_and_scale_with_beta():
    adv = torch.tensor([-10.0, -2.0, -1.0, 0.0, 0.5, 2.0, 10.0])
    w = awr_weights(adv, beta=1.0, eps=2.0)
    expected = torch.exp(torch.tensor([-2.0, -2.0, -1.0, 0.0, 0.5, 2.0, 2.0]))
    torch.testing.assert_close(w, expected)
    assert w.max() == pytest.approx(math.exp(2.0)) and w.min() == pytest.approx(math.exp(-2.0))
    # beta divides the advantage before the clip: A = 2 at beta = 4 is exp(0.5), A = 100 still exp(eps)
    w4 = awr_weights(torch.tensor([2.0, -2.0, 100.0]), beta=4.0, eps=2.0)
    torch.testing.assert_close(w4, torch.exp(torch.tensor([0.5, -0.5, 2.0])))
    assert not awr_weights(adv.requires_grad_(), 1.0, 2.0).requires_grad


def test_binary_weights_keep_exactly_the_chunks_above_the_policy():
    adv = torch.tensor([-3.0, -1e-4, 0.0, 1e-4, 50.0], requires_grad=True)
    assert binary_weights(adv).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert not binary_weights(adv).requires_grad


def test_binary_awr_step_regresses_only_the_rows_with_positive_advantage():
    """With CRR's binary filter the actor's loss is flow matching over the rows whose A > 0 (weight 1) and
    nothing from the others: its value is the masked per-row loss, recomputed from the same noise."""
    algo = small_awr(weighting="binary")
    batch = make_batch(b=16)
    t = algo.tensors(batch)
    with torch.no_grad():
        q_data = algo._q_pess(t.obs, t.actions)
    torch.manual_seed(3)
    obs_rep, pi = algo._sample_pi(t.obs, algo.config.n_policy_samples)
    keep = (q_data - algo._q_pess(obs_rep, pi).reshape(2, -1).mean(0)) > 0
    assert 0 < int(keep.sum()) < 16  # the test needs both kinds of rows
    torch.manual_seed(3)
    m = algo.actor_step(t)
    assert m["weight_mean"] == pytest.approx(float(keep.float().mean()))
    assert m["weight_max"] == 1.0


def test_critic_target_return_regresses_the_observed_return():
    """critic_target='return': a terminated episode's rows regress their discounted return (AWR with
    lambda = 1), so the critics converge to it whatever the bootstrap says; 'td' would not."""
    batch = dataclasses.replace(make_batch(b=8), returns=np.linspace(-5, 5, 8).astype(np.float32))
    results = {}
    for mode in ("return", "td"):
        algo = small_awr(critic_target=mode, critic_lr=3e-3)
        for _ in range(300):
            algo.critic_step(algo.tensors(batch))
        t = algo.tensors(batch)
        with torch.no_grad():
            q = algo.critic.forward_flat(t.obs, t.actions).mean(0)
        results[mode] = float((q - t.returns).abs().max())
    assert results["return"] < 0.5 < results["td"]


def test_one_chunk_target_bootstraps_with_gamma_h_unless_done():
    gamma, h = 0.9, torch.tensor([3.0, 3.0, 2.0])
    rewards = torch.tensor([1.0, 1.0, 2.0])
    next_q = torch.tensor([10.0, 10.0, -5.0])
    not_done = torch.tensor([1.0, 0.0, 1.0])
    y = n_step_chunk_target(rewards, gamma**h, 1.0 - not_done, next_q)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.729 * 10.0, 1.0, 2.0 - 0.81 * 5.0]))


def test_pessimistic_min_td_loss_and_advantage():
    q = torch.tensor([[1.0, 5.0, -2.0], [3.0, 4.0, -1.0]])  # K = 2 critics, B = 3
    torch.testing.assert_close(pessimistic_q(q), torch.tensor([1.0, 4.0, -2.0]))
    target = torch.tensor([1.0, 4.0, 0.0])
    assert ensemble_td_loss(q, target).item() == pytest.approx((0 + 1 + 4 + 4 + 0 + 1) / 6)
    samples = torch.tensor([[0.0, 2.0, -3.0], [2.0, 4.0, -1.0]], requires_grad=True)  # N = 2 pi samples
    adv = pessimistic_q(q) - policy_value(samples)
    torch.testing.assert_close(adv, torch.tensor([0.0, 1.0, 0.0]))
    assert not adv.requires_grad  # sg(V^pi): no gradient reaches the policy samples


def test_expectile_loss_is_halved_mse_at_one_half_and_leans_up_above():
    v, y = torch.tensor([0.0, 0.0, 1.0], requires_grad=True), torch.tensor([2.0, -1.0, 1.0])
    assert expectile_loss(v, y, 0.5).item() == pytest.approx(0.5 * (4 + 1 + 0) / 3)
    assert expectile_loss(v, y, 0.9).item() == pytest.approx((0.9 * 4 + 0.1 * 1 + 0) / 3)
    fitted = torch.zeros((), requires_grad=True)  # the minimiser is the expectile: above the mean at 0.9
    targets = torch.tensor([0.0, 0.0, 0.0, 1.0])
    opt = torch.optim.SGD([fitted], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        expectile_loss(fitted.expand(4), targets, 0.9).backward()
        opt.step()
    assert fitted.item() == pytest.approx(0.75, abs=1e-3)  # 0.9 * 1 * (1 - v) = 0.1 * 3 * v


def test_data_baseline_fits_the_target_q_of_the_data_and_is_what_the_advantage_subtracts():
    algo = small_awr(baseline="data", expectile=0.5, critic_lr=1e-2)
    assert algo.value is not None and "value" in algo.optimizers()
    batch = make_batch()
    t = algo.tensors(batch)
    for _ in range(300):
        algo.value_step(t)  # the critics do not move here: V(s) converges on their Q of the data's chunk
    q_data = pessimistic_q(algo.target_critic.forward_flat(t.obs, t.actions))
    torch.testing.assert_close(algo.value(t.obs).squeeze(-1), q_data, atol=0.05, rtol=0)
    metrics = algo.actor_step(t)
    with torch.no_grad():
        v = algo.value(t.obs).squeeze(-1)
        q = pessimistic_q(algo.critic.forward_flat(t.obs, t.actions))
    assert metrics["baseline_mean"] == pytest.approx(float(v.mean()), abs=1e-5)
    assert metrics["advantage_mean"] == pytest.approx(float((q - v).mean()), abs=1e-5)
    clone = small_awr(seed=1, baseline="data")
    clone.load_state_dict(copy.deepcopy(algo.state_dict()))
    torch.testing.assert_close(clone.value(t.obs), algo.value(t.obs), rtol=0, atol=0)


def test_polyak_update_moves_target_by_tau():
    src, tgt = nn.Linear(2, 2), nn.Linear(2, 2)
    before = tgt.weight.detach().clone()
    polyak_update(tgt, src, 0.25)
    torch.testing.assert_close(tgt.weight, 0.75 * before + 0.25 * src.weight.detach())


def test_awr_update_trains_critics_targets_and_actor():
    algo = small_awr(actor_delay=1)
    batch = make_batch()
    critic0 = [p.detach().clone() for p in algo.critic.parameters()]
    target0 = [p.detach().clone() for p in algo.target_critic.parameters()]
    policy0 = [p.detach().clone() for p in algo.policy.parameters()]
    m1 = algo.update(batch)  # critic-only warm-up step
    assert "actor_loss" not in m1 and {"critic_loss", "q_mean"} <= set(m1)
    assert all(torch.equal(a, b) for a, b in zip(policy0, algo.policy.parameters(), strict=True))
    m2 = algo.update(batch)
    for key in (
        "actor_loss",
        "advantage_mean",
        "advantage_std",
        "weight_mean",
        "weight_max",
        "clip_fraction",
    ):
        assert math.isfinite(m2[key])
    eps = algo.config.eps_clip
    assert math.exp(-eps) <= m2["weight_mean"] <= m2["weight_max"] <= math.exp(eps) + 1e-5
    assert not all(torch.equal(a, b) for a, b in zip(critic0, algo.critic.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(policy0, algo.policy.parameters(), strict=True))
    # targets moved by Polyak, i.e. only a little and towards the online critics
    moved = [
        (t - t0).abs().max().item() for t, t0 in zip(algo.target_critic.parameters(), target0, strict=True)
    ]
    assert 0 < max(moved) < 0.01
    assert all(not p.requires_grad for p in algo.target_critic.parameters())


def test_awr_state_dict_round_trip_gives_identical_critics():
    a = small_awr(seed=0)
    for i in range(3):
        a.update(make_batch(seed=i))
    b = small_awr(seed=1, actor_delay=0)
    obs, act = torch.randn(5, 3), torch.rand(5, H * 2) * 2 - 1
    assert not torch.equal(a.critic.forward_flat(obs, act), b.critic.forward_flat(obs, act))
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as from a checkpoint (optimizer state is not copied)
    torch.testing.assert_close(
        a.critic.forward_flat(obs, act), b.critic.forward_flat(obs, act), rtol=0, atol=0
    )
    torch.testing.assert_close(
        a.target_critic.forward_flat(obs, act), b.target_critic.forward_flat(obs, act), rtol=0, atol=0
    )
    assert b.steps == 3
    assert b.actor_optim.state_dict()["state"].keys() == a.actor_optim.state_dict()["state"].keys()
    # the same next step from the same state and RNG gives the same critics
    b.policy.load_state_dict(a.policy.state_dict())
    batch = make_batch(seed=9)
    torch.manual_seed(5)
    a.update(batch)
    torch.manual_seed(5)
    b.update(batch)
    torch.testing.assert_close(a.critic.forward_flat(obs, act), b.critic.forward_flat(obs, act))


def test_registry_builds_awr_and_bc_for_flow_policies_only():
    awr = build_algorithm(
        "awr", {"beta": 2.0, "critic": {"n_critics": 2, "hidden": [8]}}, make_policy(), SPEC, "flow_chunk"
    )
    assert isinstance(awr, AWR) and awr.config.beta == 2.0 and awr.critic.k == 2
    assert isinstance(build_algorithm("bc", {"offline_only": True}, make_policy(), SPEC, "flow_chunk"), BC)
    with pytest.raises(ValueError, match="flow_chunk"):
        build_algorithm("awr", None, make_policy(), SPEC, "gaussian")
    with pytest.raises(ValueError, match="eps_clip"):
        parse_config("awr", {"eps_clip": -1.0})


def test_bc_masks_padding_and_can_use_offline_rows_only():
    offline = np.array([True, False] * 4)
    bc = BC(BCConfig(offline_only=True), make_policy(), SPEC)
    online_only = make_batch(offline=np.zeros(8, bool))
    assert not bc.ready_to_update(online_only)
    assert bc.update(online_only) == {"bc_rows": 0.0}
    m = bc.update(make_batch(offline=offline))
    assert m["bc_rows"] == 4.0 and math.isfinite(m["bc_loss"])
    # human_only (HG-DAgger): demonstrations and the online chunks an operator drove, not the fleet's own
    human = BC(BCConfig(human_only=True), make_policy(), SPEC)
    mixed = dataclasses.replace(
        make_batch(offline=offline), intervention=np.array([False, True, False, False] * 2)
    )
    assert human.update(mixed)["bc_rows"] == 6.0  # 4 offline + 2 online with an intervention
    autonomous = make_batch(offline=np.zeros(8, bool))
    assert not human.ready_to_update(autonomous) and human.update(autonomous) == {"bc_rows": 0.0}
    # the loss is flow matching over the executed entries only (chunk_tensors' mask)
    plain = BC(BCConfig(), make_policy(), SPEC)
    batch = make_batch()
    t = chunk_tensors(batch, ["state"])
    assert t.mask[0].tolist() == [1, 1, 1, 1, 0, 0]
    torch.manual_seed(1)
    with torch.no_grad():
        expected = flow_matching_loss(plain.policy, t.obs, t.actions, mask=t.mask).item()
    torch.manual_seed(1)
    assert plain.update(batch)["bc_loss"] == pytest.approx(expected, rel=1e-6)


def test_chunk_replay_reads_recorded_samples_as_the_clipped_actions_robots_executed():
    # robots record a Gaussian policy's sample (its log-prob's action) and execute it clipped
    batch = make_batch()
    batch.actions[1, 0] = [3.0, -2.5]
    assert chunk_tensors(batch, ["state"]).actions[1, :2].tolist() == [3.0, -2.5]  # no bounds: as stored
    awr = small_awr()
    assert awr.tensors(batch).actions[1, :2].tolist() == [1.0, -1.0]  # the task's bounds
    assert awr.tensors(batch).actions.abs().max() <= 1.0


def _two_episodes(b: int = 8) -> ChunkBatch:
    """A batch whose rows come from two episodes that fall in different folds."""
    ids = [f"ep-{i}" for i in range(64)]
    folds = episode_folds(ids)
    a, c = ids[int(np.argmax(folds == 0))], ids[int(np.argmax(folds == 1))]
    return dataclasses.replace(make_batch(b), episode_id=np.array([a] * (b // 2) + [c] * (b - b // 2)))


def test_episode_folds_are_stable_per_episode_and_split_the_episodes_about_evenly():
    ids = [f"robot-{i % 7}/episode-{i}" for i in range(2000)]
    folds = episode_folds(ids)
    assert np.array_equal(folds, episode_folds(list(ids)))  # a pure function of the id: every worker agrees
    assert set(folds) == {0, 1} and 0.45 < folds.mean() < 0.55


def test_cross_fit_baselines_learn_only_their_folds_rows_and_the_advantage_subtracts_the_other():
    algo = small_awr(baseline="data", expectile=0.5, cross_fit=True, critic_lr=1e-2)
    t = algo.tensors(_two_episodes())
    assert t.folds is not None and t.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    only_fold0 = dataclasses.replace(t, folds=torch.zeros_like(t.folds))  # every row in fold 0
    v0 = algo.value(t.obs).detach()
    for _ in range(300):
        algo.value_step(only_fold0)
    v = algo.value(t.obs).detach()
    q_data = pessimistic_q(algo.target_critic.forward_flat(t.obs, t.actions))
    torch.testing.assert_close(v[:, 0], q_data, atol=0.05, rtol=0)  # fold 0's baseline fitted these rows
    torch.testing.assert_close(v[:, 1], v0[:, 1], rtol=0, atol=0)  # fold 1's baseline never saw them
    metrics = algo.actor_step(t)
    with torch.no_grad():
        q = pessimistic_q(algo.critic.forward_flat(t.obs, t.actions))
        other = algo.value(t.obs).gather(1, (1 - t.folds).view(-1, 1))[:, 0]
    assert metrics["advantage_mean"] == pytest.approx(float((q - other).mean()), abs=1e-5)
    with pytest.raises(ValueError, match="baseline: data"):
        AWRConfig(cross_fit=True)
