"""QAM maths (LWD eqs. 8-10): memoryless schedule, lean adjoint vs autograd, state_dict round trip."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from fleetrl.algorithms.base import PolicySpec, algorithm_class, parse_config
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.divl import DIVLConfig
from fleetrl.algorithms.qam import (
    QAM,
    QAMConfig,
    lean_adjoint,
    memoryless_drift,
    memoryless_sigma,
    sample_memoryless,
    terminal_adjoint,
    time_grid,
)
from fleetrl.models.critics import CategoricalValueConfig, ChunkQConfig
from fleetrl.models.flow import FlowChunkConfig, FlowChunkPolicy
from fleetrl.robots.protocol import ArraySpec

torch.set_num_threads(1)


def test_sigma_schedule():
    w = torch.tensor([0.1, 0.25, 0.5, 0.9])
    exact = torch.tensor([math.sqrt(2 * (1 - x) / x) for x in w.tolist()])
    assert torch.allclose(memoryless_sigma(w), exact)  # sqrt(2(1-w)/w), not the seed's sqrt(2(1-w)w)
    assert memoryless_sigma(torch.tensor(1.0)).item() == 0.0
    grid = time_grid(10)
    shifted = memoryless_sigma(grid, shift=0.1)  # the time shift used on the Euler grid
    assert torch.isfinite(shifted).all() and (shifted > 0).all()
    assert shifted[0].item() == pytest.approx(math.sqrt(2 / 0.1))
    assert torch.allclose(shifted, (2 * (1 - grid) / (grid + 0.1)).sqrt())


def test_memoryless_sde_keeps_the_flow_marginal():
    """For data N(mu, s^2) the exact velocity is known; the shifted Euler-Maruyama memoryless SDE must end
    near N(mu, s^2) and forget its starting noise."""
    mu, s = 2.0, 0.3

    def velocity(obs, x, w):
        w = w[:, None]
        var = (1 - w) ** 2 + w**2 * s**2
        return mu + (w * s**2 - (1 - w)) / var * (x - w * mu)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, 1, generator=g)
    noise = torch.randn(10, 20000, 1, generator=g)
    xs = sample_memoryless(velocity, torch.zeros(20000, 1), x0, 10, 0.1, noise)
    assert xs.shape == (11, 20000, 1)
    assert xs[-1].mean().item() == pytest.approx(mu, abs=0.1)
    assert xs[-1].std().item() == pytest.approx(s, abs=0.05)
    assert abs(np.corrcoef(x0[:, 0].numpy(), xs[-1, :, 0].numpy())[0, 1]) < 0.02  # memoryless


def test_lean_adjoint_equals_autograd_through_the_discretised_flow():
    torch.manual_seed(0)
    b, d, n, shift = 5, 3, 6, 1.0 / 6
    net = nn.Sequential(nn.Linear(2 + d + 1, 32), nn.Tanh(), nn.Linear(32, d)).double()

    def velocity(obs, x, w):
        return net(torch.cat([obs, x, w[:, None]], -1))

    obs = torch.randn(b, 2, dtype=torch.float64)
    noise = torch.randn(n, b, d, dtype=torch.float64)
    # forward: x_{k+1} = x_k + h b(x_k, w_k) + sqrt(h) sigma_k xi_k, keeping the graph
    h, ws = 1.0 / n, time_grid(n, dtype=torch.float64)
    xs = [torch.randn(b, d, dtype=torch.float64, requires_grad=True)]
    for k in range(n):
        drift = memoryless_drift(velocity(obs, xs[-1], ws[k].expand(b)), xs[-1], ws[k], shift)
        xs.append(xs[-1] + h * drift + h**0.5 * memoryless_sigma(ws[k], shift) * noise[k])
    for x in xs:
        x.retain_grad()
    target = torch.randn(d, dtype=torch.float64)
    reward = -(xs[-1] - target).square().sum() + xs[-1][:, 0].sin().sum()
    reward.backward()
    g1 = -xs[-1].grad  # eq. 10 with lambda = 1: g_1 = -grad r(a^1)
    adj, vels = lean_adjoint(velocity, obs, torch.stack([x.detach() for x in xs]), g1, shift)
    assert adj.shape == (n + 1, b, d) and vels.shape == (n, b, d)
    for k in range(n + 1):
        torch.testing.assert_close(adj[k], -xs[k].grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(vels[2], velocity(obs, xs[2].detach(), ws[2].expand(b)).detach())


def _spec() -> PolicySpec:
    return PolicySpec({"state": ArraySpec((3,), "float32")}, ArraySpec((2,), "float32", -1.0, 1.0), 2, 0.9)


def _batch(rng: np.random.Generator, b: int = 16) -> ChunkBatch:
    return ChunkBatch(
        obs={"state": rng.normal(size=(b, 3)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (b, 2, 2)).astype(np.float32),
        rewards=rng.normal(size=(b, 2)).astype(np.float32),
        chunk_reward=rng.normal(size=b).astype(np.float32),
        next_obs={"state": rng.normal(size=(b, 3)).astype(np.float32)},
        done=rng.random(b) < 0.2,
        mask=np.ones((b, 2), bool),
        discount=np.full(b, 0.81, np.float32),
        intervention=np.zeros(b, bool),
        offline=rng.random(b) < 0.5,
        robot_id=np.array(["r"] * b),
        episode_id=np.array(["e"] * b),
        step=np.zeros(b, np.int32),
        snapshot=1,
        gamma=0.9,
    )


def _make(bc_steps: int, **overrides) -> QAM:
    spec = _spec()
    policy = FlowChunkPolicy(
        FlowChunkConfig(hidden=(16,), flow_steps=3), spec.observation_spec, spec.action_spec, 2
    )
    value = CategoricalValueConfig(n_atoms=11, v_min=-5, v_max=5, hidden=(16,))
    cfg = QAMConfig(
        critic=ChunkQConfig(hidden=(16,)), divl=DIVLConfig(value=value), bc_steps=bc_steps, **overrides
    )
    return QAM(cfg, policy, spec)


def test_registry_and_phases():
    assert algorithm_class("qam") is QAM
    assert isinstance(parse_config("qam", {"temperature": 0.5}), QAMConfig)
    with pytest.raises(ValueError, match="temperature"):
        parse_config("qam", {"temperature": -1})
    torch.manual_seed(0)
    algo, rng = _make(bc_steps=2), np.random.default_rng(0)
    phases = [algo.update(_batch(rng)) for _ in range(3)]
    assert [m["phase"] for m in phases] == [0.0, 0.0, 1.0]
    assert "bc_loss" in phases[0] and "adjoint_loss" in phases[2] and algo.reference is not None
    for key in ("q_loss", "v_loss", "tau", "q_mean"):
        assert all(isinstance(m[key], float) and math.isfinite(m[key]) for m in phases)
    assert not any(p.requires_grad for p in algo.reference.parameters())
    assert _make(bc_steps=0).reference is not None  # the policy as given is the reference


@pytest.mark.parametrize("reference", ["ema", "frozen", "ema-filtered"])
def test_state_dict_round_trip_resumes_exactly(reference):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    batches = [_batch(rng) for _ in range(4)]
    for batch in batches:
        batch.returns = rng.normal(size=len(batch)).astype(np.float32)
    options = {"reference": reference.split("-")[0], "diagnostics_every": 2}
    if reference.endswith("filtered"):
        options["reference_filter"] = "return_advantage"
    algo = _make(bc_steps=2, **options)
    for batch in batches[:3]:
        algo.update(batch)
    state = copy.deepcopy(algo.state_dict())
    policy_state = copy.deepcopy(algo.policy.state_dict())

    resumed = _make(bc_steps=2, **options)
    resumed.policy.load_state_dict(policy_state)
    resumed.load_state_dict(state)
    assert resumed.steps == 3 and resumed.bc_done == 2 and resumed.reference is not None

    torch.manual_seed(123)
    m1 = algo.update(batches[3])
    torch.manual_seed(123)
    m2 = resumed.update(batches[3])
    assert m1 == m2
    for a, b in [
        (algo.policy, resumed.policy),
        (algo.critic, resumed.critic),
        (algo.divl.target, resumed.divl.target),
        (algo.reference, resumed.reference),
        *([(algo.filter_value, resumed.filter_value)] if algo.filter_value is not None else []),
    ]:
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q)


def _net_velocity(d: int):
    net = nn.Sequential(nn.Linear(2 + d + 1, 32), nn.Tanh(), nn.Linear(32, d)).double()
    return lambda obs, x, w: net(torch.cat([obs, x, w[:, None]], -1))


def test_ode_last_step_sampling_and_its_lean_adjoint_equal_autograd():
    """The noiseless last step (QAM reference) is ``x_{N-1} + h v_last``, and the lean adjoint with
    ``ode_last`` is then still the exact reverse-mode derivative of the forward map."""
    torch.manual_seed(1)
    b, d, n, shift = 4, 3, 5, 0.2
    velocity, last = _net_velocity(d), _net_velocity(d)
    obs = torch.randn(b, 2, dtype=torch.float64)
    noise = torch.randn(n, b, d, dtype=torch.float64)
    x0 = torch.randn(b, d, dtype=torch.float64)
    xs_sampled = sample_memoryless(velocity, obs, x0, n, shift, noise, last_velocity=last)
    h, ws = 1.0 / n, time_grid(n, dtype=torch.float64)
    xs = [x0.clone().requires_grad_(True)]
    for k in range(n):
        w = ws[k].expand(b)
        if k == n - 1:
            xs.append(xs[-1] + h * last(obs, xs[-1], w))
        else:
            drift = memoryless_drift(velocity(obs, xs[-1], w), xs[-1], ws[k], shift)
            xs.append(xs[-1] + h * drift + h**0.5 * memoryless_sigma(ws[k], shift) * noise[k])
    torch.testing.assert_close(xs_sampled, torch.stack([x.detach() for x in xs]))
    # the lean adjoint runs the reference drift only: here the reference is ``velocity`` on every step
    # and ``last`` = ``velocity`` so that the forward map is the one the adjoint differentiates
    xs2 = [x0.clone().requires_grad_(True)]
    for k in range(n):
        w = ws[k].expand(b)
        if k == n - 1:
            xs2.append(xs2[-1] + h * velocity(obs, xs2[-1], w))
        else:
            drift = memoryless_drift(velocity(obs, xs2[-1], w), xs2[-1], ws[k], shift)
            xs2.append(xs2[-1] + h * drift + h**0.5 * memoryless_sigma(ws[k], shift) * noise[k])
    for x in xs2:
        x.retain_grad()
    (xs2[-1].square().sum() + xs2[-1][:, 1].cos().sum()).backward()
    traj = torch.stack([x.detach() for x in xs2])
    adj, _ = lean_adjoint(velocity, obs, traj, -xs2[-1].grad, shift, ode_last=True)
    for k in range(n + 1):
        torch.testing.assert_close(adj[k], -xs2[k].grad, rtol=1e-9, atol=1e-10)


def test_terminal_adjoint_is_the_clipped_critics_gradient():
    """g_1 = -grad_a Q(clip(a)) / lambda: autograd through the clip, zero for entries out of bounds."""
    torch.manual_seed(0)
    w = torch.randn(6)

    def q_fn(a):
        return (a * w).sum(-1) + a.square().sum(-1)

    a1 = torch.tensor([[0.5, -0.2, 1.7, -3.0, 0.0, 0.9], [2.0, 0.1, -0.4, 0.3, -1.2, 0.2]])
    g = terminal_adjoint(q_fn, a1, 2.0, -1.0, 1.0)
    inside = (a1.abs() <= 1.0).float()
    torch.testing.assert_close(g, -(w + 2 * a1.clamp(-1, 1)) * inside / 2.0)
    assert (g[a1.abs() > 1.0] == 0).all()


def test_guiding_critic_is_the_target_ensembles_mean_by_default():
    algo = _make(bc_steps=0)
    obs, a = torch.randn(5, 3), torch.rand(5, 4) * 2 - 1
    with torch.no_grad():
        for p in algo.critic.parameters():
            p.add_(torch.randn_like(p))  # online and target critics now differ
    expected = algo.target_critic.forward_flat(obs, a).mean(0)
    torch.testing.assert_close(algo.guide_q(obs)(a), expected)
    online = _make(bc_steps=0, guide_critic="online", actor_q="min")
    torch.testing.assert_close(online.guide_q(obs)(a), online.critic.forward_flat(obs, a).min(0).values)


def test_reference_modes_ema_follows_a_bc_flow_frozen_stays():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    for mode in ("ema", "frozen"):
        algo = _make(bc_steps=1, reference=mode, reference_ema=0.5)
        algo.update(_batch(rng))  # the BC step, then f_beta starts
        start = copy.deepcopy(algo.reference.state_dict())
        bc_before = None if algo.bc_flow is None else copy.deepcopy(algo.bc_flow.state_dict())
        for _ in range(3):
            metrics = algo.update(_batch(rng))
        moved = any(not torch.equal(start[k], v) for k, v in algo.reference.state_dict().items())
        assert moved == (mode == "ema") and ("bc_loss" in metrics) == (mode == "ema")
        assert not any(p.requires_grad for p in algo.reference.parameters())
        if mode == "ema":  # the BC flow trained, f_beta moved half-way towards it on the last update
            assert any(not torch.equal(bc_before[k], v) for k, v in algo.bc_flow.state_dict().items())
            assert set(algo.optimizers()) == {"policy", "critic", "value", "reference"}
        else:
            assert algo.bc_flow is None and "reference" not in algo.optimizers()


@pytest.mark.parametrize("rows", ["all", "offline"])
def test_the_ema_reference_clones_every_row_or_only_the_demonstrations(rows):
    """Online batches mix demonstrations with the fleet's episodes: with 'all' the reference's BC flow
    learns from a batch without a single offline row, with 'offline' such a batch makes no BC step."""
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    algo = _make(bc_steps=1, reference="ema", reference_rows=rows)
    first = _batch(rng)
    first.offline[:] = True
    algo.update(first)  # the BC phase (offline rows), then f_beta starts
    online = _batch(rng)
    online.offline[:] = False
    before = copy.deepcopy(algo.bc_flow.state_dict())
    metrics = algo.update(online)
    trained = any(not torch.equal(before[k], v) for k, v in algo.bc_flow.state_dict().items())
    assert trained == ("bc_loss" in metrics) == (rows == "all")


@pytest.mark.parametrize("steps", [1, 3])
def test_reference_steps_bc_steps_of_the_reference_per_update(steps):
    """``reference_steps`` BC steps of the reference's BC flow per update, each followed by f_beta's EMA
    step; the policy's actor and the critics still make one step each."""
    torch.manual_seed(0)
    rng = np.random.default_rng(4)
    algo = _make(bc_steps=1, reference="ema", reference_ema=0.5, reference_steps=steps)
    algo.update(_batch(rng))  # the BC phase, then f_beta starts
    algo.update(_batch(rng))
    adam_steps = {int(s["step"]) for s in algo.bc_optim.state_dict()["state"].values()}
    assert adam_steps == {steps}
    assert {int(s["step"]) for s in algo.actor_optim.state_dict()["state"].values()} == {2}  # BC + adjoint
    # f_beta made `steps` EMA moves at rate 0.5: for a parameter the BC flow no longer changes, the last
    # update leaves f_beta (1 - 0.5^steps) of the way from where it was to the BC flow
    before = copy.deepcopy(algo.reference.state_dict())
    for group in algo.bc_optim.param_groups:
        group["lr"] = 0.0  # the BC flow's steps now change nothing: f_beta's moves are the EMA's alone
    algo.update(_batch(rng))
    for k, v in algo.reference.state_dict().items():
        target = algo.bc_flow.state_dict()[k]
        expected = before[k] + (1 - 0.5**steps) * (target - before[k])
        assert torch.allclose(v, expected, atol=1e-6), k
    if steps > 1:  # a frozen reference makes no BC steps to count: refused, naming the field to change
        with pytest.raises(ValueError, match="reference: ema"):
            _make(bc_steps=1, reference="frozen", reference_steps=steps)


def test_diagnostics_reported_every_n_updates_and_kept_in_between():
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    algo = _make(bc_steps=2, diagnostics_every=3)
    ms = [algo.update(_batch(rng)) for _ in range(5)]
    keys = {"q_data", "q_policy", "q_random", "random_above_data", "policy_to_data"}
    assert keys <= set(ms[0]) and "policy_to_reference" not in ms[0]  # BC phase: no reference yet
    assert ms[1]["q_data"] == ms[0]["q_data"] and ms[2]["q_data"] == ms[0]["q_data"]
    assert {"policy_to_reference", "reference_to_data"} <= set(ms[3]) and ms[3]["q_data"] != ms[0]["q_data"]
    assert all(math.isfinite(ms[3][k]) for k in keys) and 0.0 <= ms[3]["random_above_data"] <= 1.0
    assert "q_data" not in _make(bc_steps=1, diagnostics_every=0).update(_batch(rng))


def test_conservative_term_adds_cql_on_random_and_policy_chunks_and_ranks_them_below_the_data():
    rng = np.random.default_rng(5)
    batch = _batch(rng, b=64)
    algo = _make(bc_steps=0, critic_target="return", conservative_alpha=2.0, conservative_samples=3)
    t = algo.tensors(batch)
    t.returns = -torch.rand(64)  # every row's return observed: the target is known without bootstrapping
    torch.manual_seed(7)
    obs, proposals = algo.conservative_proposals(t)
    assert obs.shape == (4 * 64, 3) and proposals.shape == (4 * 64, 4)
    assert proposals.min() >= -1.0 and proposals.max() <= 1.0
    with torch.no_grad():  # the loss by hand, with the same proposals (same RNG draws)
        q = algo.critic.forward_flat(t.obs, t.actions)
        q_prop = algo.critic.forward_flat(obs, proposals).reshape(2, 4, 64)
        gap = (torch.logsumexp(q_prop, dim=1) - q).mean()
        expected = (q - t.returns).square().mean() + 2.0 * gap
    torch.manual_seed(7)
    fit = algo.fit_critics(t, torch.zeros(64), polyak=0.005)
    assert math.isclose(fit["loss"], float(expected), rel_tol=1e-5)
    assert math.isclose(fit["conservative_gap"], float(gap), rel_tol=1e-5)
    # trained on it, the critic ranks random chunks below the data's own; without it, as often above as not
    above = {}
    for alpha in (2.0, 0.0):
        torch.manual_seed(0)
        algo = _make(bc_steps=0, critic_target="return", conservative_alpha=alpha, critic_lr=3e-3)
        for _ in range(400):
            fit = algo.fit_critics(t, torch.zeros(64), polyak=0.005)
        assert ("conservative_gap" in fit) == (alpha > 0)
        with torch.no_grad():
            q_data = algo.critic.forward_flat(t.obs, t.actions).min(0).values
            q_rand = algo.critic.forward_flat(t.obs, torch.rand(64, 4) * 2 - 1).min(0).values
        above[alpha] = float((q_rand > q_data).float().mean())
    assert above[2.0] < 0.2 and above[0.0] > 0.35, above


def test_reference_filter_clones_only_rows_whose_return_beats_the_other_folds_value():
    """'return_advantage': each fold's value learns only its own episodes' returns; the reference's BC flow
    clones a row only where its return beats the value of the fold that never saw its episode (or where
    no return was observed)."""
    import dataclasses

    from fleetrl.algorithms.data_value import episode_folds, fold_value
    from fleetrl.models.flow import flow_matching_loss

    ids = [f"ep-{i}" for i in range(64)]
    folds = episode_folds(ids)
    a, b = ids[int(np.argmax(folds == 0))], ids[int(np.argmax(folds == 1))]
    rng = np.random.default_rng(7)
    batch = dataclasses.replace(
        _batch(rng, 8),
        episode_id=np.array([a] * 4 + [b] * 4),
        offline=np.ones(8, bool),
        returns=np.array([-1, -9, -2, np.nan, -8, -3, -7, -4], np.float32),
    )
    torch.manual_seed(0)
    algo = _make(bc_steps=1, reference_filter="return_advantage", critic_lr=1e-2)
    t = algo.tensors(batch)
    assert t.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and "filter_value" in algo.optimizers()
    only_fold0 = dataclasses.replace(t, folds=torch.zeros_like(t.folds))
    v0 = algo.filter_value(t.obs).detach()
    for _ in range(300):
        algo.filter_step(only_fold0)
    v = algo.filter_value(t.obs).detach()
    seen = ~torch.isnan(t.returns)
    torch.testing.assert_close(v[seen, 0], t.returns[seen], atol=0.3, rtol=0)  # fold 0 fitted those returns
    torch.testing.assert_close(v[:, 1], v0[:, 1], rtol=0, atol=0)  # fold 1 never learnt a thing
    with torch.no_grad():
        other = fold_value(algo.filter_value(t.obs), t.folds, other=True)
    expected = (t.returns > other) | ~seen
    keep = algo.reference_keep(t)
    assert torch.equal(keep, expected) and bool(keep[3])  # the row without a return is kept
    assert 0 < int(keep[seen].sum()) < int(seen.sum())  # some rows with a return kept, some dropped
    algo.update(batch)  # the BC phase; then the reference's BC flow clones the kept rows only
    flow = copy.deepcopy(algo.bc_flow)
    tt = algo.tensors(batch)
    keep = algo.reference_keep(tt)
    torch.manual_seed(5)
    want = flow_matching_loss(flow, tt.obs[keep], tt.actions[keep], mask=tt.mask[keep])
    torch.manual_seed(5)
    metrics = algo.reference_step(tt)
    assert metrics["bc_loss"] == pytest.approx(float(want.detach()), rel=1e-5)
    assert metrics["reference_kept"] == pytest.approx(float(keep.float().mean()))
    with pytest.raises(ValueError, match="reference: ema"):
        QAMConfig(reference="frozen", reference_filter="return_advantage")
