"""scoring/value_report.py: the value report's pure parts (hold-out split, summary line, JSON-ready dict)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fleetrl.scoring.value_reliability import ValueTrace, reliability_report
from fleetrl.scoring.value_report import holdout_split, metrics_summary, value_report


@pytest.mark.parametrize(("n", "holdout", "held"), [(10, 0.2, 2), (10, 0.0, 0), (3, 0.01, 1), (2, 0.9, 1)])
def test_holdout_split_is_a_seeded_partition(n, holdout, held):
    episodes = [f"ep{i}" for i in range(n)]
    train, out = holdout_split(episodes, holdout, seed=7)
    assert len(out) == held and len(train) == n - held
    assert sorted(train + out) == sorted(episodes)
    assert (train, out) == holdout_split(episodes, holdout, seed=7)


def test_summary_says_n_a_for_undefined_metrics():
    metrics = reliability_report([ValueTrace(values=np.linspace(0, 1, 20), outcome="success")])
    line = metrics_summary(metrics)
    assert line.startswith("MOR 1  bump ratio 0  bump mag 0  ")
    assert "error sensitivity n/a  error slope n/a" in line


class _Cfg:
    t_max, c_fail = 40.0, 40.0

    def model_dump(self, mode: str) -> dict:
        assert mode == "json"
        return {"history_frames": 0}


class _Model:
    cfg = _Cfg()


def test_report_is_strict_json_with_the_training_log():
    history = [{"step": 5, "loss": 0.5}, {"step": 10, "loss": math.nan}]
    report = value_report(
        _Model(),
        {"mor": math.inf, "per_episode": [{"mor": math.nan}]},
        source="store",
        task="reach",
        seed=1,
        steps=10,
        checkpoint="ckpt.pt",
        n_episodes=4,
        n_train=3,
        n_eval=1,
        evaluated_on="held_out",
        history=history,
        plot=None,
    )
    json.dumps(report, allow_nan=False)
    assert report["metrics"] == {"mor": None, "per_episode": [{"mor": None}]}
    assert report["training"] == {
        "final": {"step": 10, "loss": None},
        "history": [history[0], report["training"]["final"]],
    }
    assert report["label_scale"] == {"t_max": 40.0, "c_fail": 40.0} and report["estimator"] == {
        "history_frames": 0
    }
    assert report["command"] == "value report" and report["evaluated_on"] == "held_out"
