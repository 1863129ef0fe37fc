"""VOC, VROC, VOC-F1 and negative rate on hand cases; the report's structure."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.models.progress_critic import ProgressCriticConfig, build_progress_critic
from fleetrl.robots.episode import Episode, empty_columns
from fleetrl.scoring.critic_metrics import (
    critic_report,
    negative_rate,
    progress_values,
    spearman,
    strided,
    voc,
    voc_f1,
    voc_from_deltas,
    vroc,
    vroc_from_deltas,
)


def test_voc_hand_cases():
    assert voc(np.arange(10.0)) == pytest.approx(1.0)
    assert voc(np.exp(np.arange(10.0))) == pytest.approx(1.0)  # rank-based: any monotone curve
    assert voc(-np.arange(10.0)) == pytest.approx(-1.0)
    assert voc(np.full(10, 0.3)) == 0.0  # constant: defined as no order information
    assert voc(np.array([1.0])) == 0.0 and voc(np.zeros(0)) == 0.0
    # one swap in five: 1 - 6 * 2 / (5 * 24)
    assert voc(np.array([0.0, 2.0, 1.0, 3.0, 4.0])) == pytest.approx(0.9)
    # ties share ranks (flat start, then rising): Pearson correlation of average ranks
    v = np.array([0.0, 0.0, 1.0, 2.0])
    assert voc(v) == pytest.approx(np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])


def test_spearman_matches_definition_and_checks_lengths():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    with pytest.raises(ValueError):
        spearman(np.zeros(3), np.zeros(4))


def test_progress_values_follow_the_papers_recursion():
    np.testing.assert_allclose(progress_values([0.5, 0.5]), [0.0, 0.5, 0.75])
    np.testing.assert_allclose(progress_values([0.5, -1.0]), [0.0, 0.5, 0.0])
    np.testing.assert_allclose(progress_values([1.0, -0.5, 0.3]), [0.0, 1.0, 1.0, 1.0])  # 1 is absorbing
    v = progress_values(np.full(2000, -0.9))  # would overflow a naive recursion
    assert v[1] == pytest.approx(-0.9) and not np.isnan(v).any() and np.isneginf(v[-1])


def test_voc_and_vroc_from_deltas():
    up = np.full(20, 0.1)
    assert voc_from_deltas(up) == pytest.approx(1.0)
    assert voc_from_deltas(-up) == pytest.approx(-1.0)
    assert voc_from_deltas(np.zeros(20)) == 0.0
    # a good critic scores the reversed episode negatively -> values fall -> VROC = +1
    assert vroc_from_deltas(-up) == pytest.approx(1.0)
    assert vroc_from_deltas(up) == pytest.approx(-1.0)
    assert vroc(np.arange(5.0)[::-1]) == pytest.approx(1.0)
    # huge negative deltas: ranks stay exact where the explicit values overflow
    assert voc_from_deltas(np.full(3000, -0.99)) == pytest.approx(-1.0)
    assert vroc_from_deltas(np.full(3000, -0.99)) == pytest.approx(1.0)


def test_voc_f1_and_negative_rate():
    assert voc_f1(1.0, 1.0) == pytest.approx(1.0)
    assert voc_f1(0.5, 1.0) == pytest.approx(2 / 3)
    assert voc_f1(0.9, -0.5) == 0.0 and voc_f1(-1.0, -1.0) == 0.0 and voc_f1(0.0, 0.0) == 0.0
    assert negative_rate(np.array([0.1, -0.2, 0.0, -0.1])) == 0.5
    assert negative_rate(np.zeros(0)) == 0.0


def test_strided_keeps_the_last_frame():
    f = np.arange(10)
    np.testing.assert_array_equal(strided(f, 3), [0, 3, 6, 9])
    np.testing.assert_array_equal(strided(f, 4), [0, 4, 8, 9])
    np.testing.assert_array_equal(strided(f, 1), f)


def _episode(T: int, outcome: str, eid: str) -> Episode:
    s = np.random.default_rng(T).normal(size=(T + 1, 3)).astype(np.float32)
    return Episode(
        episode_id=eid,
        task="t",
        robot_id="r",
        outcome=outcome,
        observations={"state": s[:T]},
        actions=np.zeros((T, 1), np.float32),
        columns=empty_columns(T),
        final_observation={"state": s[T]},
    )


def test_critic_report_structure():
    model = build_progress_critic(
        ProgressCriticConfig(obs_dim=3, tasks=("t",), encoder_hidden=(8,), head_hidden=(8,))
    )
    eps = [_episode(12, "success", "a"), _episode(9, "timeout", "b"), _episode(7, "failure", "c")]
    rep = critic_report(model, eps, stride=2)
    assert rep["n"] == 3 and rep["success"]["n"] == 1 and rep["failed"]["n"] == 2
    for key in ("voc", "vroc", "voc_f1", "negative_rate", "progress", "final_done_prob", "false_done_rate"):
        assert -1.0 <= rep[key] <= 1.0 or key == "progress", key
    assert [r["episode_id"] for r in rep["episodes"]] == ["a", "b", "c"]
    assert critic_report(model, [])["n"] == 0
