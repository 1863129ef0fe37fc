"""AWR's advantage weights against a direct computation (normalisation, clip, temperature), its running
advantage scale and its checkpoint, Algorithm 1's schedule (warm start, critic-first delay, N_Q/N_pi) and
the diagnostics each update reports."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from test_awr import H, make_batch, small_awr

from fleetrl.algorithms.awr import AWRConfig, awr_weights, running_scale
from fleetrl.algorithms.chunk_algorithm import chunk_tensors

torch.set_num_threads(1)


def test_weights_normalise_by_the_scale_then_clip_then_exponentiate():
    adv = torch.tensor([-30.0, -4.0, 0.0, 1.0, 6.0, 50.0])
    scale, beta, eps = 4.0, 0.5, 3.0
    w = awr_weights(adv, beta, eps, scale)
    expected = [math.exp(min(max(a / (beta * scale), -eps), eps)) for a in adv.tolist()]
    torch.testing.assert_close(w, torch.tensor(expected))
    # the scale and the temperature enter only as their product; scale 1 is eq. 11 on raw advantages
    torch.testing.assert_close(awr_weights(adv, 2.0, eps, 1.0), awr_weights(adv, 1.0, eps, 2.0))
    torch.testing.assert_close(awr_weights(adv, 1.0, eps), torch.exp(adv.clamp(-eps, eps)))
    assert w.max().item() == pytest.approx(math.exp(3.0)) and w.min().item() == pytest.approx(math.exp(-3.0))


def test_default_upper_clip_is_awr_weight_clip_20():
    cfg = AWRConfig()
    assert math.exp(cfg.eps_clip) == pytest.approx(20.0, rel=0.01)
    assert cfg.beta == 1.0 and cfg.normalize_advantages and cfg.bc_steps == 1000 and cfg.actor_every == 1


def test_running_scale_starts_at_the_first_batch_then_moves_by_its_rate():
    assert running_scale(0.0, 5.0, 0.01) == 5.0
    assert running_scale(5.0, 15.0, 0.01) == pytest.approx(5.1)
    assert running_scale(5.0, 15.0, 1.0) == 15.0
    assert running_scale(0.0, 0.0, 0.01) == 1e-6  # a batch without spread cannot make the scale 0


def test_actor_step_weights_match_a_direct_computation():
    algo = small_awr(beta=0.5, eps_clip=2.0, adv_scale_rate=0.1)
    algo.adv_scale = 2.0  # as if restored from a checkpoint
    batch = make_batch(b=16)
    t = chunk_tensors(batch, ["state"])
    torch.manual_seed(3)
    m = algo.actor_step(t)
    # the scale moved by its rate towards this batch's advantage std
    assert m["adv_scale"] == pytest.approx(2.0 + 0.1 * (m["advantage_std"] - 2.0), rel=1e-6)
    assert algo.adv_scale == pytest.approx(m["adv_scale"])
    assert 0.0 < m["weight_ess"] <= 1.0 and math.isfinite(m["policy_to_data"])

    # the same pass by hand, from an identical (same-seed) algorithm and the same random draws
    fresh = small_awr(beta=0.5, eps_clip=2.0, adv_scale_rate=0.1)
    fresh.adv_scale = 2.0
    with torch.no_grad():
        torch.manual_seed(3)
        q_data = fresh._q_pess(t.obs, t.actions)
        obs_rep, pi = fresh._sample_pi(t.obs, 2)
        q_pi = fresh._q_pess(obs_rep, pi).reshape(2, 16)
        adv = q_data - q_pi.mean(0)
        scale = 2.0 + 0.1 * (float(adv.std()) - 2.0)
        w = torch.exp(torch.clamp(adv / (0.5 * scale), -2.0, 2.0))
    assert m["advantage_std"] == pytest.approx(float(adv.std()), rel=1e-5)
    assert m["weight_mean"] == pytest.approx(float(w.mean()), rel=1e-5)
    assert m["weight_max"] == pytest.approx(float(w.max()), rel=1e-5)
    ess = float(w.sum() ** 2 / (16 * (w**2).sum()))
    assert m["weight_ess"] == pytest.approx(ess, rel=1e-5)


def test_raw_advantages_when_normalisation_is_off():
    algo = small_awr(normalize_advantages=False)
    m = algo.actor_step(chunk_tensors(make_batch(), ["state"]))
    assert m["adv_scale"] == 1.0 and algo.adv_scale == 0.0


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a, module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, module.parameters(), strict=True))


def test_schedule_warm_start_then_critic_only_then_weighted_steps():
    offline = np.array([True, False] * 4)
    algo = small_awr(bc_steps=2, actor_delay=2, actor_every=2, diagnostics_every=1000)
    assert [algo.phase(s) for s in range(1, 8)] == ["bc", "bc", "critic", "critic", "awr", "awr", "awr"]
    seen = []
    for i in range(8):
        policy0, critic0 = params(algo.policy), params(algo.critic)
        m = algo.update(make_batch(seed=i, offline=offline))
        seen.append((m["phase"], "bc_loss" in m, "actor_loss" in m, not same(policy0, algo.policy)))
        assert not same(critic0, algo.critic)  # every update is a critic step
    assert seen == [
        (0.0, True, False, True),  # warm start: flow matching on the offline rows
        (0.0, True, False, True),
        (1.0, False, False, False),  # critic first: the policy stays where the warm start left it
        (1.0, False, False, False),
        (2.0, False, False, False),  # step 5: actor_every = 2 skips odd steps
        (2.0, False, True, True),
        (2.0, False, False, False),
        (2.0, False, True, True),
    ]
    assert algo.adv_scale > 0.0


def test_warm_start_clones_only_offline_rows():
    algo = small_awr(bc_steps=5)
    m = algo.update(make_batch(offline=np.array([True, False] * 4)))
    assert m["bc_rows"] == 4.0 and math.isfinite(m["bc_loss"])
    policy0 = params(algo.policy)
    m = algo.update(make_batch(offline=np.zeros(8, bool)))
    assert m["bc_rows"] == 0.0 and "bc_loss" not in m and same(policy0, algo.policy)


def test_diagnostics_every_n_updates_in_every_phase():
    algo = small_awr(bc_steps=2, diagnostics_every=2)
    batch = make_batch(b=12)
    batch.returns = np.linspace(-5.0, 0.0, 12).astype(np.float32)
    ms = [algo.update(batch) for _ in range(4)]
    for k in ("q_data", "q_policy", "q_random", "random_above_data", "policy_above_data"):
        assert k not in ms[0] and k not in ms[2] and math.isfinite(ms[1][k]) and math.isfinite(ms[3][k])
    assert "q_return_corr" in ms[1] and -1.0 <= ms[3]["q_return_corr"] <= 1.0
    assert "policy_to_data" in ms[1]  # warm start: from one extra policy sample
    # a weighted step always reports the weight statistics and the distance it computes anyway
    for k in ("weight_mean", "weight_max", "weight_ess", "policy_to_data", "v_pi_sem_over_scale"):
        assert math.isfinite(ms[2][k])


def test_state_round_trip_keeps_the_advantage_scale_and_schedule():
    a = small_awr(bc_steps=1)
    for i in range(4):
        a.update(make_batch(seed=i))
    assert a.adv_scale > 0.0 and a.steps == 4
    b = small_awr(seed=1, bc_steps=1)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.adv_scale == a.adv_scale and b.steps == 4 and b.phase(b.steps + 1) == "awr"
    b.policy.load_state_dict(a.policy.state_dict())
    batch = make_batch(seed=9)
    torch.manual_seed(5)
    ma = a.update(batch)
    torch.manual_seed(5)
    mb = b.update(batch)
    assert ma["adv_scale"] == pytest.approx(mb["adv_scale"]) and ma["actor_loss"] == pytest.approx(
        mb["actor_loss"]
    )
    obs, act = torch.randn(5, 3), torch.rand(5, H * 2) * 2 - 1
    torch.testing.assert_close(a.critic.forward_flat(obs, act), b.critic.forward_flat(obs, act))
    # a checkpoint from before the scale existed loads as 'not yet set'
    old = {k: v for k, v in a.state_dict().items() if k != "adv_scale"}
    c = small_awr()
    c.load_state_dict(copy.deepcopy(old))
    assert c.adv_scale == 0.0
