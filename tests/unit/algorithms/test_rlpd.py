"""RLPD/SAC maths against direct computations (soft chunk target with the subset min and entropy term, the
squashed log-prob, actor and temperature losses), one update's bookkeeping, the registry, the config, the
state round trip and the live-switch rules."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fleetrl.algorithms.base import (
    PolicySpec,
    algorithm_class,
    build_algorithm,
    incompatibility,
    parse_config,
    registry,
)
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.chunk_algorithm import chunk_tensors
from fleetrl.algorithms.rlpd import RLPD, RLPDConfig, split_obs
from fleetrl.algorithms.sac_math import (
    random_subset,
    sac_actor_loss,
    soft_chunk_target,
    squashed_log_prob,
    squashed_rsample,
    strided_slices,
    temperature_loss,
)
from fleetrl.models.critics import ChunkQConfig
from fleetrl.models.gaussian import GaussianMLPConfig
from fleetrl.models.nets import flatten_obs
from fleetrl.models.policies import build_policy
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.learning.algorithm_set import AlgorithmSet

torch.set_num_threads(1)

OBS = {"state": ArraySpec((3,), "float32"), "goal": ArraySpec((2, 1), "float32")}
ACT = ArraySpec((2,), "float32", -2.0, 2.0)
H = 3
SPEC = PolicySpec(OBS, ACT, H, gamma=0.9)


def make_policy(seed: int = 0, squash: bool = True):
    return build_policy(GaussianMLPConfig(hidden=(16,), seed=seed, squash=squash), OBS, ACT, H)


def small_rlpd(seed: int = 0, **kw) -> RLPD:
    kw.setdefault("critic", ChunkQConfig(n_critics=4, hidden=(16, 16)))
    kw.setdefault("utd", 2)
    kw.setdefault("batch_size", 4)
    return RLPD(RLPDConfig(seed=seed, **kw), make_policy(seed), SPEC)


def make_batch(b: int = 8, seed: int = 0) -> ChunkBatch:
    rng = np.random.default_rng(seed)
    mask = np.ones((b, H), bool)
    mask[0, 2:] = False
    return ChunkBatch(
        obs={
            "state": rng.normal(size=(b, 3)).astype(np.float32),
            "goal": rng.normal(size=(b, 2, 1)).astype(np.float32),
        },
        actions=rng.uniform(-2, 2, (b, H, 2)).astype(np.float32),
        rewards=rng.normal(size=(b, H)).astype(np.float32),
        chunk_reward=rng.normal(size=b).astype(np.float32),
        next_obs={
            "state": rng.normal(size=(b, 3)).astype(np.float32),
            "goal": rng.normal(size=(b, 2, 1)).astype(np.float32),
        },
        done=np.arange(b) % 4 == 0,
        mask=mask,
        discount=np.full(b, 0.9**H, np.float32),
        intervention=np.zeros(b, bool),
        offline=np.arange(b) < b // 2,
        robot_id=np.array(["r"] * b),
        episode_id=np.array(["e"] * b),
        step=np.zeros(b, np.int32),
        snapshot=1,
        gamma=0.9,
        returns=rng.normal(size=b).astype(np.float32),
    )


# --- the maths ---------------------------------------------------------------------------------------


def test_soft_target_takes_the_subset_min_and_the_entropy_term():
    g = torch.Generator().manual_seed(3)
    k, b = 10, 6
    q_all = torch.randn(k, b, generator=g)
    subset = random_subset(k, 2, g)
    logp = torch.randn(b, generator=g)
    r, disc = torch.randn(b, generator=g), torch.full((b,), 0.9**3)
    done = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    alpha = torch.tensor(0.3)
    y = soft_chunk_target(r, disc, done, q_all[subset], logp, alpha)
    for i in range(b):
        v = min(float(q_all[j, i]) for j in subset.tolist()) - 0.3 * float(logp[i])
        expected = float(r[i]) + (1 - float(done[i])) * 0.9**3 * v
        assert float(y[i]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # without the entropy backup the target is the plain clipped (subset-min) chunk target
    y0 = soft_chunk_target(r, disc, done, q_all[subset], logp, alpha, backup_entropy=False)
    torch.testing.assert_close(y0, r + (1 - done) * disc * q_all[subset].min(0).values)
    assert not soft_chunk_target(r, disc, done, q_all[subset].requires_grad_(), logp, alpha).requires_grad


def test_random_subset_is_distinct_and_in_range():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        s = random_subset(10, 2, g)
        assert s.numel() == 2 and len(set(s.tolist())) == 2 and int(s.min()) >= 0 and int(s.max()) < 10
        seen.update(s.tolist())
    assert seen == set(range(10))  # every head gets its turn in the target
    assert sorted(random_subset(4, 4, g).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        random_subset(2, 3)


def test_squashed_log_prob_is_the_change_of_variables_and_matches_the_served_policy():
    torch.manual_seed(0)
    dist = torch.distributions.Normal(torch.randn(5, 4), torch.rand(5, 4) + 0.2)
    u = dist.sample().clamp(-3, 3)
    ref = torch.distributions.TransformedDistribution(dist, [torch.distributions.TanhTransform()])
    torch.testing.assert_close(
        squashed_log_prob(dist, u), ref.log_prob(torch.tanh(u)).sum(-1), rtol=1e-4, atol=1e-3
    )
    assert torch.isfinite(squashed_log_prob(dist, torch.full((5, 4), 30.0))).all()  # where tanh rounds to 1
    # with bounds [c - s, c + s]: the Jacobian adds -log(s) per dimension
    torch.testing.assert_close(
        squashed_log_prob(dist, u, 2.0), squashed_log_prob(dist, u) - 4 * math.log(2.0), rtol=1e-5, atol=1e-5
    )
    # the policy's own log-prob of the executed chunk (what PPO and the replicas use) is the same density
    policy = make_policy()
    obs = {"state": torch.randn(5, 3), "goal": torch.randn(5, 2, 1)}
    torch.manual_seed(1)
    flat, logp = squashed_rsample(policy.distribution(obs), 0.0, 2.0)
    torch.testing.assert_close(logp, policy.log_prob(obs, policy.unflatten(flat)), rtol=1e-4, atol=1e-4)


def test_actor_loss_is_alpha_logp_minus_mean_q_and_leaves_alpha_alone():
    logp = torch.randn(7, requires_grad=True)
    q = torch.randn(5, 7, requires_grad=True)
    log_alpha = torch.tensor(-1.0, requires_grad=True)
    loss = sac_actor_loss(logp, q, log_alpha.exp())
    expected = (math.exp(-1.0) * logp - q.mean(0)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert log_alpha.grad is None  # the temperature has its own loss
    torch.testing.assert_close(q.grad, torch.full((5, 7), -1.0 / 35))  # every head counts (ensemble mean)


def test_temperature_loss_raises_alpha_below_the_target_entropy():
    for entropy, target, sign in ((-3.0, -1.0, -1.0), (2.0, -1.0, 1.0)):
        log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
        h = torch.tensor(entropy, requires_grad=True)
        loss = temperature_loss(log_alpha, h, target)
        assert loss.item() == pytest.approx(0.5 * (entropy - target))
        loss.backward()
        assert float(log_alpha.grad) == pytest.approx(0.5 * (entropy - target))  # d alpha / d log alpha
        assert math.copysign(1.0, float(log_alpha.grad)) == sign and h.grad is None


def test_strided_slices_are_disjoint_and_keep_the_mix():
    slices = strided_slices(12, 3)
    rows = torch.cat(slices)
    assert sorted(rows.tolist()) == list(range(12))
    offline = torch.arange(12) < 6  # a replay batch: offline rows first
    assert all(int(offline[s].sum()) == 2 for s in slices)


def test_split_obs_inverts_flatten_obs():
    obs = {"state": torch.randn(4, 3), "goal": torch.randn(4, 2, 1)}
    back = split_obs(flatten_obs(obs, list(OBS)), OBS)
    for k in OBS:
        torch.testing.assert_close(back[k], obs[k])


# --- the plug-in -------------------------------------------------------------------------------------


def test_critic_step_regresses_the_direct_soft_target():
    algo = small_rlpd()
    t = chunk_tensors(make_batch(), algo.policy.obs_keys)
    gen, alpha = copy.deepcopy(algo.generator), float(algo.alpha)
    torch.manual_seed(5)
    m = algo.critic_step(t)
    torch.manual_seed(5)
    with torch.no_grad():
        dist = algo.policy.distribution(split_obs(t.next_obs, OBS))
        u = dist.rsample()
        a = 2.0 * torch.tanh(u)
        logp = squashed_log_prob(dist, u, 2.0)
        subset = random_subset(4, 2, gen)
        fresh = small_rlpd()  # the critics before the step: the same seed builds the same target network
        q_next = fresh.target_critic.forward_flat(t.next_obs, a)[subset].min(0).values
        y = t.chunk_reward + (1 - t.done) * t.discount * (q_next - alpha * logp)
        q = fresh.critic.forward_flat(t.obs, t.actions)
    assert m["target_mean"] == pytest.approx(float(y.mean()), rel=1e-5, abs=1e-5)
    assert m["critic_loss"] == pytest.approx(float((q - y).square().mean()), rel=1e-5)


def test_update_takes_utd_critic_steps_one_actor_step_and_reports_diagnostics():
    algo = small_rlpd(utd=4, batch_size=2)
    assert algo.batch_request().size == 8 and algo.batch_request().kind == "chunks"
    critic_before = copy.deepcopy(algo.critic.state_dict())
    policy_before = copy.deepcopy(algo.policy.state_dict())
    alpha_before = float(algo.alpha)
    m = algo.update(make_batch(8))
    assert m["critic_updates"] == 4 and algo.critic_optim.state[next(algo.critic.parameters())]["step"] == 4
    assert algo.actor_optim.state[algo.policy.log_std]["step"] == 1
    assert any(not torch.equal(v, algo.critic.state_dict()[k]) for k, v in critic_before.items())
    assert not torch.equal(policy_before["log_std"], algo.policy.log_std)
    assert float(algo.alpha) != alpha_before
    for key in ("q_data", "q_policy", "q_random", "random_above_data", "alpha", "entropy", "policy_to_data"):
        assert key in m and math.isfinite(m[key]), key
    assert m["offline_fraction"] == 0.5 and m["target_entropy"] == -H * 2 / 2
    # the actor's loss leaves the critics without gradient (it only moves the policy)
    algo.critic.zero_grad(set_to_none=True)
    algo.actor_step(chunk_tensors(make_batch(4), algo.policy.obs_keys))
    assert all(p.grad is None for p in algo.critic.parameters())


def test_policy_optimizer_covers_the_policy_and_the_state_round_trips():
    algo = small_rlpd()
    policy_params = {id(p) for p in algo.policy.parameters()}
    assert {id(p) for g in algo.optimizers()["policy"].param_groups for p in g["params"]} == policy_params
    assert set(algo.optimizers()) == {"policy", "critic", "temperature"}
    for seed in range(3):
        algo.update(make_batch(8, seed))
    clone = small_rlpd()
    clone.policy.load_state_dict(algo.policy.state_dict())
    clone.load_state_dict(copy.deepcopy(algo.state_dict()))
    assert clone.steps == 3 and float(clone.alpha) == float(algo.alpha)
    torch.manual_seed(9)
    m1 = algo.update(make_batch(8, 7))
    torch.manual_seed(9)
    m2 = clone.update(make_batch(8, 7))
    assert m1 == m2  # same critics, targets, optimizer moments, temperature and subset draws


def test_registry_config_and_switch_rules():
    assert registry()["rlpd"] == "fleetrl.algorithms.rlpd:RLPD" and algorithm_class("rlpd") is RLPD
    cfg = parse_config("rlpd", None)
    assert (cfg.critic.n_critics, cfg.target_subset, cfg.utd, cfg.batch_size) == (10, 2, 20, 256)
    assert cfg.critic.layer_norm and cfg.tau == 0.005 and cfg.backup_entropy
    with pytest.raises(ValueError, match="target_subset"):
        parse_config("rlpd", {"target_subset": 3, "critic": {"n_critics": 2}})
    with pytest.raises(ValueError, match="utd"):
        parse_config("rlpd", {"utd": 0})
    assert incompatibility("rlpd", "gaussian_mlp") is None
    assert "gaussian_mlp" in incompatibility("rlpd", "flow_chunk")
    with pytest.raises(ValueError, match="squash"):
        build_algorithm("rlpd", {}, make_policy(squash=False), SPEC, "gaussian_mlp")
    # the live switch keeps the one policy: ppo <-> rlpd share gaussian_mlp; qam cannot train it
    policy = make_policy()
    algos = AlgorithmSet(policy, SPEC, "gaussian_mlp", torch.device("cpu"))
    small = {"critic": {"n_critics": 2, "hidden": [8]}, "utd": 2, "batch_size": 4}
    rlpd = algos.activate("rlpd", small, 0)
    assert rlpd.policy is policy
    rlpd.update(make_batch(8))
    assert algos.activate("ppo", {}, 1).policy is policy
    again = algos.activate("rlpd", small, 2)
    assert again.steps == 1  # its critics and temperature came back
    with pytest.raises(ValueError, match="flow_chunk"):
        algos.activate("qam", {}, 3)
