"""Value-reliability metrics (Robo-ValueRL §3.4) and action-quality indicators (§3.1) on hand-built value
curves whose answers follow from the definitions by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fleetrl.scoring.value_quality import (
    HIGH,
    LOW,
    NEUTRAL,
    quality_from_deltas,
    quality_indicators,
    quality_prompt,
    quantile_margins,
    value_deltas,
)
from fleetrl.scoring.value_reliability import (
    ValueTrace,
    bump_magnitude,
    bump_ratio,
    causal_smooth,
    equal_boundaries,
    error_deficits,
    error_sensitivity,
    error_slope,
    failure_tail_segment,
    midpoint_ordering_rate,
    normal_progress_reference,
    reliability_report,
    subgoal_midpoints,
)

torch.set_num_threads(1)

# --- MOR --------------------------------------------------------------------------------------------------


def test_equal_boundaries_fallback():
    assert equal_boundaries(10, 5).tolist() == [0, 2, 4, 6, 8, 10]
    assert equal_boundaries(7, 3).tolist() == [0, 2, 4, 7]
    assert equal_boundaries(2, 5).tolist() == [0, 1, 2]  # never more intervals than steps


def test_mor_monotone_curve_is_one_and_hand_case():
    assert midpoint_ordering_rate(np.linspace(0, 1, 20), equal_boundaries(20, 5)) == 1.0
    assert midpoint_ordering_rate(np.linspace(1, 0, 20), equal_boundaries(20, 5)) == 0.0
    v = np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.8])
    # midpoints floor((b_j + b_j+1)/2) = 1, 3, 5 -> m = 0.5, 0.9, 0.8 -> one of two transitions rises
    assert subgoal_midpoints(v, [0, 2, 4, 6]).tolist() == [0.5, 0.9, 0.8]
    assert midpoint_ordering_rate(v, [0, 2, 4, 6]) == 0.5
    # ties do not count as ordered (strict >)
    assert midpoint_ordering_rate(np.full(10, 0.3), equal_boundaries(10, 5)) == 0.0
    assert math.isnan(midpoint_ordering_rate(v, [0, 6]))  # one interval: undefined
    with pytest.raises(ValueError, match="increase"):
        midpoint_ordering_rate(v, [0, 3, 3, 6])


# --- fluency -----------------------------------------------------------------------------------------------


def test_bumps_of_monotone_and_dipping_curves():
    up = np.linspace(0, 1, 11)
    assert bump_ratio(up) == 0.0 and bump_magnitude(up) == 0.0
    v = np.array([0.0, 0.1, 0.2, 0.5, 0.3, 0.4, 0.45, 0.5])  # one drop of 0.2 among 7 steps
    assert bump_ratio(v, eps=0.01) == pytest.approx(1 / 7)
    assert bump_magnitude(v) == pytest.approx(0.2 / 7)
    # the tolerance hides the drop from the ratio, never from the magnitude
    assert bump_ratio(v, eps=0.25) == 0.0 and bump_magnitude(v) == pytest.approx(0.2 / 7)
    small = np.array([0.5, 0.495, 0.6])  # a 0.005 wobble: within eps=0.01
    assert bump_ratio(small) == 0.0 and bump_magnitude(small) == pytest.approx(0.005 / 2)
    assert math.isnan(bump_ratio(np.array([0.3]))) and math.isnan(bump_magnitude(np.array([])))


# --- temporal error discrimination --------------------------------------------------------------------------


def test_causal_smoothing():
    assert causal_smooth(np.array([0.0, 3.0, 6.0, 9.0]), 2).tolist() == [0.0, 1.5, 4.5, 7.5]
    assert causal_smooth(np.array([1.0, 2.0]), 1).tolist() == [1.0, 2.0]


def test_error_sensitivity_and_slope_on_a_known_drop():
    # progress 0.01/step for 20 steps, then the value falls to 0.1 and stays there for 10 steps
    v = np.concatenate([0.01 * np.arange(20), np.full(10, 0.1)])
    d = error_deficits(v, (20, 30), smooth_window=1, fit_window=10)
    # reference continues the pre-error line: ref_i = 0.01 i, so delta_i = 0.01 i - 0.1
    assert np.allclose(d, 0.01 * np.arange(20, 30) - 0.1)
    assert error_sensitivity(d) == pytest.approx(0.19)
    assert error_slope(d) == pytest.approx(0.01)
    # no error: the value keeps rising on the reference line -> zero deficit, zero slope
    flat = error_deficits(0.01 * np.arange(30), (20, 30), smooth_window=1)
    assert np.allclose(flat, 0.0) and error_slope(flat) == pytest.approx(0.0, abs=1e-12)


def test_reference_slope_is_clipped_and_capped():
    falling = np.linspace(0.5, 0.4, 10)  # a falling pre-error trend is not "normal progress"
    ref = normal_progress_reference(falling, 10, 13, fit_window=10)
    assert np.allclose(ref, falling.mean())  # flat at the least-squares level with slope 0
    rising = 0.1 * np.arange(10)  # 0 .. 0.9, +0.1/step: the reference is capped at 1
    assert np.allclose(normal_progress_reference(rising, 10, 14), [1.0, 1.0, 1.0, 1.0])
    assert np.allclose(normal_progress_reference(rising, 10, 12, ref_max=None), [1.0, 1.1])
    assert np.allclose(normal_progress_reference(np.array([0.3]), 1, 3), [0.3, 0.3])  # one pre step
    with pytest.raises(ValueError):
        normal_progress_reference(rising, 0, 3)
    with pytest.raises(ValueError, match="inside"):
        error_deficits(rising, (5, 11))


def test_failure_tail_fallback():
    assert failure_tail_segment(20, 0.25) == (15, 20)
    assert failure_tail_segment(3, 0.1) == (2, 3)  # at least one step


# --- report -------------------------------------------------------------------------------------------------


def test_reliability_report_aggregates_with_fallbacks_and_annotations():
    up = np.linspace(0, 1, 20)
    dip = up.copy()
    dip[10:] -= 0.3  # one drop of 0.3 at step 9 -> 10
    fail = np.concatenate([0.01 * np.arange(20), np.full(10, 0.1)])  # drops at step 20
    tail = np.concatenate([0.01 * np.arange(22), np.full(8, 0.1)])  # drops in its last 25 % (8 steps)
    traces = [
        ValueTrace(up, "success", episode_id="up"),
        ValueTrace(dip, "success", boundaries=[0, 5, 10, 15, 20], episode_id="dip"),
        ValueTrace(tail, "failure", episode_id="fail"),
        ValueTrace(fail, "timeout", error_segments=[(20, 30)], episode_id="annotated"),
        ValueTrace(fail, "aborted", episode_id="aborted"),  # no label, no annotation: no metrics
    ]
    r = reliability_report(traces, n_segments=5, bump_eps=0.01, smooth_window=1, fit_window=10)
    json.dumps(r, allow_nan=False)  # JSON-clean
    assert r["n_episodes"] == 5 and r["n_success"] == 2 and r["n_failed"] == 2
    # dip: midpoints at 2, 7, 12, 17 -> v = .105, .368, .332, .595: 2 of 3 rise
    assert r["per_episode"][1]["mor"] == pytest.approx(2 / 3)
    assert r["mor"] == pytest.approx((1 + 2 / 3) / 2)
    assert r["bump_ratio"] == pytest.approx((0 + 1 / 19) / 2)
    assert r["bump_magnitude"] == pytest.approx((0 + (0.3 - 1 / 19) / 19) / 2)
    # both segments: the reference continues 0.01 i, so delta_i = 0.01 i - 0.1 up to i = 29
    # (failure-tail fallback: (22, 30); annotated: (20, 30))
    assert r["per_episode"][2]["error_sensitivity"] == pytest.approx(0.19)
    assert r["error_sensitivity"] == pytest.approx(0.19)
    assert r["error_slope"] == pytest.approx(0.01)
    assert r["n_error_segments"] == 2
    assert r["sources"] == {
        "boundaries_annotated": 1,
        "boundaries_equal": 1,
        "errors_annotated": 1,
        "errors_failure": 1,
    }
    assert "error_sensitivity" not in r["per_episode"][4] and "mor" not in r["per_episode"][2]
    assert r["final_value_success"] == pytest.approx((1.0 + 0.7) / 2)
    empty = reliability_report([])
    assert empty["mor"] is None and empty["error_slope"] is None


# --- action-quality indicators (§3.1) ---------------------------------------------------------------------


def test_value_deltas_and_indicators_numpy_and_torch():
    v = np.array([0.0, 0.1, 0.1, 0.05, 0.3])
    assert np.allclose(value_deltas(v, 1), [0.1, 0.0, -0.05, 0.25, 0.0])  # t + 1 clamped at the end
    assert np.allclose(value_deltas(v, 2), [0.1, -0.05, 0.2, 0.25, 0.0])
    q = quality_indicators(v, 1, delta_pos=0.05, delta_neg=-0.02)
    assert q.tolist() == [HIGH, NEUTRAL, LOW, HIGH, NEUTRAL] and q.dtype == np.int64
    qt = quality_indicators(torch.tensor(v), 1, 0.05, -0.02)
    assert qt.tolist() == q.tolist() and qt.dtype == torch.int64
    batch = quality_indicators(np.stack([v, v[::-1]]), 1, 0.05, -0.02)
    assert batch.shape == (2, 5) and batch[0].tolist() == q.tolist()
    assert quality_from_deltas(np.array([0.05, -0.02]), 0.05, -0.02).tolist() == [NEUTRAL, NEUTRAL]
    with pytest.raises(ValueError):
        quality_from_deltas(v, 0.0, 0.1)
    with pytest.raises(ValueError):
        value_deltas(v, 0)
    assert quality_prompt(HIGH) == "Quality: High" and quality_prompt(LOW) == "Quality: Low"


def test_quantile_margins_select_the_top_share():
    d = np.arange(10, dtype=float)
    pos, neg = quantile_margins(d, top_frac=0.3, bottom_frac=0.2)
    q = quality_from_deltas(d, pos, neg)
    assert (q == HIGH).sum() == 3 and (q == LOW).sum() == 2
    pos, neg = quantile_margins(d, top_frac=0.5)
    q = quality_from_deltas(d, pos, neg)
    assert (q == HIGH).sum() == 5 and (q == LOW).sum() == 0
    with pytest.raises(ValueError):
        quantile_margins(d, 0.8, 0.3)
