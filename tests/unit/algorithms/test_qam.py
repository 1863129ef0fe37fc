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


def _make(bc_steps: int) -> QAM:
    spec = _spec()
    policy = FlowChunkPolicy(
        FlowChunkConfig(hidden=(16,), flow_steps=3), spec.observation_spec, spec.action_spec, 2
    )
    value = CategoricalValueConfig(n_atoms=11, v_min=-5, v_max=5, hidden=(16,))
    cfg = QAMConfig(critic=ChunkQConfig(hidden=(16,)), divl=DIVLConfig(value=value), bc_steps=bc_steps)
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


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    batches = [_batch(rng) for _ in range(4)]
    algo = _make(bc_steps=2)
    for batch in batches[:3]:
        algo.update(batch)
    state = copy.deepcopy(algo.state_dict())
    policy_state = copy.deepcopy(algo.policy.state_dict())

    resumed = _make(bc_steps=2)
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
    ]:
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q)
