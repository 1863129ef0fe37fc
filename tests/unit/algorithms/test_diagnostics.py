"""The learner diagnostics on hand cases: Q rankings, return correlation, action distance, weight ESS."""

from __future__ import annotations

import math

import torch

from fleetrl.algorithms.diagnostics import (
    action_distance,
    q_diagnostics,
    random_chunks,
    return_correlation,
    uniform_chunks,
    weight_stats,
)


def test_q_diagnostics_ranks_data_policy_and_random():
    d = q_diagnostics(
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
        torch.tensor([0.0, 3.0, 2.0, 5.0]),
        torch.tensor([2.0, 0.0, 0.0, 0.0]),
    )
    assert d["q_data"] == 2.5 and d["q_policy"] == 2.5 and d["q_random"] == 0.5
    assert d["random_above_data"] == 0.25 and d["policy_above_data"] == 0.5


def test_return_correlation_leaves_out_incomplete_episodes():
    q = torch.arange(10, dtype=torch.float32)
    returns = 2.0 * q + 1.0
    returns[3] = float("nan")
    assert math.isclose(return_correlation(q, returns), 1.0, abs_tol=1e-9)
    assert math.isclose(return_correlation(q, -returns), -1.0, abs_tol=1e-9)
    assert return_correlation(q[:5], returns[:5]) is None  # fewer than 8 complete rows
    assert return_correlation(q, torch.ones(10)) is None  # no spread


def test_action_distance_counts_only_executed_entries():
    a, b = torch.zeros(2, 3), torch.tensor([[1.0, 1.0, 100.0], [1.0, 1.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert action_distance(a, b, mask) == 1.0
    assert math.isclose(action_distance(a, b), math.sqrt((4 + 2 * 100**2) / 6), rel_tol=1e-6)


def test_weight_ess_is_one_for_uniform_and_one_over_n_for_a_single_winner():
    assert math.isclose(weight_stats(torch.ones(8))["weight_ess"], 1.0)
    w = torch.full((8,), 1e-9)
    w[0] = 1.0
    s = weight_stats(w)
    assert math.isclose(s["weight_ess"], 1 / 8, rel_tol=1e-6) and s["weight_max"] == 1.0


def test_uniform_chunks_stay_within_bounds():
    low, high = torch.tensor([-1.0, 0.0, 5.0]), torch.tensor([1.0, 0.5, 6.0])
    x = uniform_chunks(1000, low, high)
    assert x.shape == (1000, 3) and bool((x >= low).all() and (x <= high).all())
    assert float(x[:, 2].std()) > 0.2  # spread over the range, not a constant


def test_random_chunks_use_the_bounds_or_the_data_range_where_unbounded():
    data = torch.tensor([[-3.0, 0.5], [2.0, 1.5]])
    boxed = random_chunks(500, data, -1.0, 1.0)
    assert boxed.shape == (500, 2) and boxed.min() >= -1.0 and boxed.max() <= 1.0
    free = random_chunks(500, data, -math.inf, math.inf)
    assert torch.isfinite(free).all()
    assert free[:, 0].min() >= -3.0 and free[:, 0].max() <= 2.0 and free[:, 0].max() > 1.0  # beyond +-1
    assert free[:, 1].min() >= 0.5 and free[:, 1].max() <= 1.5
