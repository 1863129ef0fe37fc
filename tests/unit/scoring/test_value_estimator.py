"""Robo-ValueRL value estimator (§3.1, App. C.1): HL-Gauss targets, remaining-time labels, history
windows, model contract, and a small training run that must recover progress."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydantic
import pytest
import torch

from fleetrl.models.value_estimator import (
    HistoryValueEstimator,
    ValueEstimatorConfig,
    bin_centres,
    bin_edges,
    build_value_estimator,
    distribution_quantiles,
    history_indices,
    hl_gauss_targets,
    label_scale,
    remaining_time_labels,
)
from fleetrl.robots.episode import Episode, empty_columns
from fleetrl.scoring.critic_metrics import spearman
from fleetrl.scoring.value_training import (
    ValueTrainConfig,
    cosine_lr,
    estimator_config_for,
    train_value_estimator,
)

torch.set_num_threads(1)


def reach_episode(rng: np.random.Generator, outcome: str, eid: str, speed: float = 0.02) -> Episode:
    """State [distance to goal, noise, noise]: a success closes the distance at ``speed`` per step (so
    the distance encodes the remaining time); a failure stalls near its start for 80 steps."""
    x0 = rng.uniform(0.6, 1.4)
    if outcome == "success":
        T = int(np.ceil(x0 / speed))
        x = np.maximum(x0 - speed * np.arange(T + 1), 0.0)
    else:
        T = 80
        x = x0 + rng.normal(0, 0.01, T + 1)
    s = np.stack([x, rng.normal(0, 1, T + 1), rng.normal(0, 1, T + 1)], 1).astype(np.float32)
    return Episode(
        episode_id=eid,
        task="reach",
        robot_id="r",
        outcome=outcome,
        observations={"state": s[:T]},
        actions=np.zeros((T, 1), np.float32),
        columns=empty_columns(T),
        final_observation={"state": s[T]},
        source="offline",
    )


def small_cfg(**kw) -> ValueEstimatorConfig:
    base = dict(n_bins=51, d_model=32, encoder_hidden=(64, 64), head_layers=1)
    return ValueEstimatorConfig(**{**base, **kw})


def test_config_is_frozen_strict_and_described():
    with pytest.raises(pydantic.ValidationError):
        ValueEstimatorConfig(bogus=1)
    with pytest.raises(pydantic.ValidationError):
        ValueEstimatorConfig().n_bins = 3
    for cls in (ValueEstimatorConfig, ValueTrainConfig):
        assert all(f.description for f in cls.model_fields.values()), cls
    c = ValueEstimatorConfig()
    assert c.n_bins == 256 and c.history_frames == 5 and c.target == "centres"  # the paper's choices
    with pytest.raises(ValueError, match="obs_dim and obs_keys"):
        build_value_estimator(ValueEstimatorConfig())


def test_bins_have_paper_centres():
    assert torch.allclose(bin_centres(5), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    e = bin_edges(5)
    assert e.shape == (6,) and torch.allclose(0.5 * (e[1:] + e[:-1]), bin_centres(5))


@pytest.mark.parametrize("integrate", [True, False])
def test_hl_gauss_targets_sum_to_one_and_mean_is_the_label(integrate):
    K = 256
    edges, centres, sigma = bin_edges(K), bin_centres(K), 1.0 / (K - 1)
    labels = torch.tensor([0.0, 0.013, 0.25, 0.5, 0.731, 0.99, 1.0])
    q = hl_gauss_targets(labels, edges, sigma, integrate=integrate)
    assert q.shape == (7, K) and (q >= 0).all()
    assert torch.allclose(q.sum(-1), torch.ones(7), atol=1e-5)
    mean = (q * centres).sum(-1)
    inside = slice(1, 6)
    assert torch.allclose(mean[inside], labels[inside], atol=1e-4)
    # at the ends the Gaussian is cut by the range: the mean moves inwards by less than one bin
    assert (mean[[0, -1]] - labels[[0, -1]]).abs().max() < 1.0 / (K - 1)
    # batched input keeps its leading shape
    assert hl_gauss_targets(labels.reshape(7, 1), edges, sigma).shape == (7, 1, K)


def test_centre_targets_are_paper_eq_11():
    K, v, sigma = 5, 0.3, 0.25
    c = np.linspace(0, 1, K)
    w = np.exp(-((v - c) ** 2) / (2 * sigma**2))
    q = hl_gauss_targets([v], bin_edges(K), sigma, integrate=False)[0]
    assert np.allclose(q.numpy(), w / w.sum(), atol=1e-6)
    # the integrated form puts the same mass on the central bin as the Gaussian CDF over its edges
    from math import erf, sqrt

    e = bin_edges(K).numpy()
    cdf = [0.5 * (1 + erf((x - v) / (sqrt(2) * sigma))) for x in e]
    qi = hl_gauss_targets([v], bin_edges(K), sigma, integrate=True)[0].numpy()
    assert np.isclose(qi[1], (cdf[2] - cdf[1]) / (cdf[-1] - cdf[0]), atol=1e-6)


def test_remaining_time_labels_and_label_scale():
    # success: r_t = T - t, v = 1 - r/T_max  (C.1 eqs. 9-10)
    assert np.allclose(remaining_time_labels(4, True, c_fail=3, t_max=10), [0.6, 0.7, 0.8, 0.9])
    # failure: r_t = T - t + C_fail
    assert np.allclose(remaining_time_labels(4, False, c_fail=3, t_max=10), [0.3, 0.4, 0.5, 0.6])
    # clipped to [0, 1]
    assert np.allclose(remaining_time_labels(4, False, c_fail=3, t_max=5), [0.0, 0.0, 0.0, 0.2])
    assert remaining_time_labels(3, True, 0, 10).dtype == np.float32
    # derived scale: C_fail = longest success, T_max = the largest r_0
    assert label_scale([4, 6, 5], [True, False, True], None, None) == (11.0, 5.0)
    assert label_scale([4, 6], [False, False], None, None) == (12.0, 6.0)
    assert label_scale([4, 6], [True, False], 5000, 7) == (5000.0, 7.0)


def test_history_indices_pad_at_episode_start():
    idx, ok = history_indices(5, frames=2, stride=2)
    assert idx.tolist() == [[0, 0], [0, 0], [0, 0], [0, 1], [0, 2]]
    assert ok.tolist() == [[False, False], [False, False], [False, True], [False, True], [True, True]]
    idx0, ok0 = history_indices(3, frames=0, stride=1)
    assert idx0.shape == (3, 0) and ok0.shape == (3, 0)


def test_model_shapes_prediction_and_checkpoint_round_trip():
    rng = np.random.default_rng(0)
    eps = [reach_episode(rng, "success", "a"), reach_episode(rng, "failure", "b")]
    cfg = estimator_config_for(eps, small_cfg())
    assert cfg.obs_keys == ("state",) and cfg.obs_dim == 3 and cfg.c_fail == len(eps[0])
    m = build_value_estimator(cfg)
    logits = m(torch.randn(4, 3), torch.randn(4, 5, 3), torch.zeros(4, 5, dtype=torch.bool))
    assert logits.shape == (4, 51)
    v = m.predict(eps[0].observations)
    assert v.shape == (len(eps[0]),) and v.dtype == np.float32 and ((v >= 0) & (v <= 1)).all()
    again = HistoryValueEstimator.from_checkpoint(m.checkpoint())
    assert np.allclose(again.predict(eps[0].observations), v, atol=1e-6)
    with pytest.raises(ValueError, match="history"):
        m(torch.randn(2, 3))
    no_hist = build_value_estimator(cfg.model_copy(update={"history_frames": 0}))
    assert no_hist(torch.randn(2, 3)).shape == (2, 51)
    probs = m.predict_probs(eps[1].observations)
    q = distribution_quantiles(probs, m.centres.numpy(), (0.1, 0.5, 0.9))
    assert q.shape == (3, len(eps[1])) and (q[0] <= q[1]).all() and (q[1] <= q[2]).all()


def test_cosine_schedule_ends_at_final_ratio():
    assert cosine_lr(1, 100, 1e-3, 0.05) == pytest.approx(1e-3)
    assert cosine_lr(100, 100, 1e-3, 0.05) == pytest.approx(5e-5)


def test_training_recovers_progress_on_synthetic_episodes():
    rng = np.random.default_rng(0)
    train = [reach_episode(rng, "success", f"s{i}") for i in range(16)]
    train += [reach_episode(rng, "failure", f"f{i}") for i in range(6)]
    train += [dataclasses.replace(train[0], episode_id="ab", outcome="aborted")]
    test = [reach_episode(rng, "success", f"ts{i}") for i in range(5)]
    test += [reach_episode(rng, "failure", f"tf{i}") for i in range(3)]
    calls = []
    cfg = ValueTrainConfig(estimator=small_cfg(), batch_size=128, lr=3e-3, log_every=100)
    model, history = train_value_estimator(
        train, cfg, steps=300, seed=0, progress=lambda s, e: calls.append(s)
    )
    assert calls == [100, 200, 300] and history[-1]["loss"] < history[0]["loss"]
    # the aborted copy was left out: the label scale comes from the 22 labelled episodes only
    assert model.cfg.c_fail == max(len(ep) for ep in train[:16])
    pred = [model.predict(ep.observations) for ep in test]
    true = [remaining_time_labels(len(ep), ep.success, model.cfg.c_fail, model.cfg.t_max) for ep in test]
    ok = [i for i, ep in enumerate(test) if ep.success]
    rho = spearman(np.concatenate([pred[i] for i in ok]), np.concatenate([true[i] for i in ok]))
    assert rho > 0.8, rho
    assert all(spearman(pred[i], np.arange(len(pred[i]))) > 0.8 for i in ok)
    mae = np.mean(np.abs(np.concatenate([pred[i] for i in ok]) - np.concatenate([true[i] for i in ok])))
    assert mae < 0.08, mae
    # stalled failures are valued below successful episodes (C_fail pushes their labels down)
    failed_mean = np.mean([pred[i].mean() for i in range(len(test)) if i not in ok])
    assert failed_mean < np.mean([pred[i].mean() for i in ok]) - 0.2
