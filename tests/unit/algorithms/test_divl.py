"""DIVL maths (LWD app. A1, eqs. 17-24): C51 projection, quantile readout, entropy-adapted tau, TD target."""

from __future__ import annotations

import pytest
import torch

from fleetrl.algorithms.divl import (
    DIVL,
    DIVLConfig,
    c51_project,
    entropy_adapted_tau,
    normalized_entropy,
    quantile_readout,
    scalar_to_categorical,
    value_cross_entropy,
)
from fleetrl.algorithms.td import n_step_chunk_target
from fleetrl.models.critics import CategoricalValueConfig
from fleetrl.robots.protocol import ArraySpec

torch.set_num_threads(1)
ATOMS = torch.linspace(-10.0, 0.0, 11)  # spacing 1


def test_targets_on_atoms_are_one_hot():
    out = scalar_to_categorical(ATOMS.clone(), ATOMS)
    assert torch.equal(out, torch.eye(11))
    odd = torch.linspace(-3.0, 2.0, 7)  # spacing 5/6: floating-point positions snap onto atoms
    assert torch.allclose(scalar_to_categorical(odd.clone(), odd), torch.eye(7), atol=1e-6)


def test_targets_outside_support_clamp_to_end_atoms():
    out = scalar_to_categorical(torch.tensor([-1e6, -10.5, 0.3, 42.0]), ATOMS)
    assert torch.equal(out[:2], torch.eye(11)[[0, 0]])
    assert torch.equal(out[2:], torch.eye(11)[[10, 10]])


def test_mass_splits_linearly_between_neighbours():
    out = scalar_to_categorical(torch.tensor([-9.75, -0.5, -4.1]), ATOMS)
    assert out[0, 0] == pytest.approx(0.75) and out[0, 1] == pytest.approx(0.25)  # -9.75 is nearer -10
    assert out[1, 9] == pytest.approx(0.5) and out[1, 10] == pytest.approx(0.5)
    assert out[2, 5] == pytest.approx(0.1, abs=1e-5) and out[2, 6] == pytest.approx(0.9, abs=1e-5)
    assert (out > 0).sum(1).tolist() == [2, 2, 2]
    # the projection keeps the mean for targets inside the support
    assert torch.allclose((out * ATOMS).sum(1), torch.tensor([-9.75, -0.5, -4.1]), atol=1e-5)


def test_total_mass_is_one_for_distributional_targets():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(64, 11, generator=g).softmax(-1)
    rewards = torch.randn(64, 1, generator=g) * 5
    values = rewards + 0.9 * ATOMS  # a distributional Bellman target, partly outside the support
    out = c51_project(values, probs, ATOMS)
    assert out.shape == (64, 11) and (out >= 0).all()
    assert torch.allclose(out.sum(1), torch.ones(64), atol=1e-6)


def test_quantile_readout_hand_cases():
    atoms = torch.tensor([0.0, 1.0, 2.0])
    probs = torch.tensor([[0.2, 0.3, 0.5]]).expand(6, 3)
    taus = torch.tensor([0.1, 0.2, 0.21, 0.5, 0.51, 1.0])
    assert quantile_readout(probs, atoms, taus).tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]  # eq. 23
    assert quantile_readout(probs[:1], atoms, 0.5).tolist() == [1.0]  # scalar tau
    interp = quantile_readout(probs[:4], atoms, torch.tensor([0.1, 0.35, 0.5, 0.75]), interpolate=True)
    assert torch.allclose(interp, torch.tensor([0.0, 0.5, 1.0, 1.5]))
    one_hot = torch.eye(3)[[1]]
    assert quantile_readout(one_hot, atoms, 0.99).tolist() == [1.0]


def test_entropy_and_adaptive_tau_bounds_and_monotonicity():
    k = 11
    uniform, one_hot = torch.full((1, k), 1.0 / k), torch.eye(k)[[3]]
    assert normalized_entropy(uniform).item() == pytest.approx(1.0)
    assert normalized_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    kw = dict(tau_base=0.6, alpha=0.3, tau_min=0.1, tau_max=0.99)
    assert entropy_adapted_tau(one_hot, **kw).item() == pytest.approx(0.6)  # confident: tau_base
    assert entropy_adapted_tau(uniform, **kw).item() == pytest.approx(0.3)  # diffuse: tau_base - alpha
    eps = torch.linspace(0.0, 1.0, 21)[:, None]
    mixtures = (1 - eps) * one_hot + eps * uniform  # entropy grows with eps
    h, tau = normalized_entropy(mixtures), entropy_adapted_tau(mixtures, **kw)
    assert (h.diff() > 0).all() and (tau.diff() <= 0).all()
    assert (tau >= 0.1).all() and (tau <= 0.99).all()
    clipped = entropy_adapted_tau(mixtures, tau_base=0.9, alpha=2.0, tau_min=0.4, tau_max=0.8)
    assert clipped.max().item() == pytest.approx(0.8) and clipped.min().item() == pytest.approx(0.4)


def test_n_step_chunk_target():
    r, d = torch.tensor([[-1.0, -2.0]]), torch.tensor([[0.5, 0.25]])
    boot = torch.tensor([-8.0])
    one = n_step_chunk_target(r[:, :1], d[:, :1], torch.zeros(1, 1), boot)
    assert one.item() == pytest.approx(-1.0 + 0.5 * -8.0)
    two = n_step_chunk_target(r, d, torch.zeros(1, 2), boot)
    assert two.item() == pytest.approx(-1.0 + 0.5 * -2.0 + 0.125 * -8.0)
    ended = n_step_chunk_target(r, d, torch.tensor([[1.0, 0.0]]), boot)  # terminated in chunk 0
    assert ended.item() == pytest.approx(-1.0)


def test_value_model_fits_scalar_targets_and_reads_quantiles():
    torch.manual_seed(0)
    cfg = DIVLConfig(value=CategoricalValueConfig(n_atoms=21, v_min=-10, v_max=0, hidden=(32,)), lr=1e-2)
    divl = DIVL(cfg, {"state": ArraySpec((2,), "float32")})
    obs = torch.zeros(256, 2)
    targets = torch.where(torch.rand(256) < 0.7, torch.tensor(-8.0), torch.tensor(-2.0))  # 70% / 30%
    logits = divl.value.logits_flat(obs)
    assert value_cross_entropy(logits, scalar_to_categorical(targets, divl.value.atoms)) > 2.0
    for _ in range(200):
        metrics = divl.step(obs, targets)
    probs = divl.value.logits_flat(obs[:1]).softmax(-1)
    assert metrics["v_loss"] < 0.7  # entropy of the 0.7/0.3 mixture is 0.61
    assert quantile_readout(probs, divl.value.atoms, 0.5).item() == pytest.approx(-8.0)
    assert quantile_readout(probs, divl.value.atoms, 0.9).item() == pytest.approx(-2.0)


def test_bootstrap_reads_the_online_value_model_by_default():
    """Eqs. 14/19 and Alg. 2: the target's quantile is V_psi's, not its EMA copy's (``bootstrap_from``)."""
    torch.manual_seed(0)
    value = CategoricalValueConfig(n_atoms=11, v_min=-10, v_max=0, hidden=(16,))
    obs = torch.randn(8, 2)
    for source in ("online", "ema"):
        divl = DIVL(
            DIVLConfig(value=value, lr=0.05, bootstrap_from=source), {"state": ArraySpec((2,), "float32")}
        )
        for _ in range(20):
            divl.step(obs, torch.full((8,), -1.0))  # online V moves to -1 fast, the EMA copy lags
        model = divl.value if source == "online" else divl.target
        probs = model.logits_flat(obs).softmax(-1)
        tau = entropy_adapted_tau(probs, 0.6, 0.3, 0.1, 0.99)
        boot, tau_out, _ = divl.bootstrap(obs)
        torch.testing.assert_close(boot, quantile_readout(probs, model.atoms, tau))
        torch.testing.assert_close(tau_out, tau)
        if source == "online":
            assert boot.mean().item() == pytest.approx(-1.0)
        else:
            assert boot.mean().item() < -2.0
