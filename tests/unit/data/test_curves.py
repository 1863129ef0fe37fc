"""workers/data/curves.py: windowed success / intervention curves from hand-built catalog rows."""

from __future__ import annotations

import pytest

from fleetrl.workers.data.curves import episode_curves, row_hours


def row(snapshot: int, outcome: str = "success", n_steps: int = 100, iv: int = 0, **kw) -> dict:
    return {
        "snapshot": snapshot,
        "episode_id": f"ep{snapshot}",
        "task": "reach",
        "robot_id": "r1",
        "outcome": outcome,
        "source": "online",
        "labelled_by": "env",
        "n_steps": n_steps,
        "intervention_steps": iv,
        "duration_s": n_steps / 10.0,
        "created": 1000.0 + snapshot,
        **kw,
    }


def test_windows_rates_and_axes():
    rows = [
        row(1, "success"),
        row(2, "failure", iv=50),  # half its steps under a human
        row(3, "success", iv=10),  # succeeded, but with help
        row(4, "timeout"),
        row(5, "success"),
    ]
    c = episode_curves(rows, window=2, control_hz=10.0)
    assert (c["window"], c["episodes"], c["aborted"], c["hours_from"]) == (2, 5, 0, "steps")
    assert c["robot_hours"] == pytest.approx(500 / 10 / 3600)
    p1, p2, p3 = c["points"]
    assert (p1["n"], p2["n"], p3["n"]) == (2, 2, 1)  # the last window is partial and says so
    assert (p1["episodes"], p2["episodes"], p3["episodes"]) == (2, 4, 5)
    assert p1["success_rate"] == 0.5 and p1["intervention_rate"] == pytest.approx(50 / 200)
    assert p1["intervened_episode_rate"] == 0.5 and p1["autonomous_success_rate"] == 0.5
    assert p2["success_rate"] == 0.5 and p2["intervention_rate"] == pytest.approx(10 / 200)
    assert p2["intervened_episode_rate"] == 0.5 and p2["autonomous_success_rate"] == 0.0
    assert p3["success_rate"] == 1.0 and p3["intervention_rate"] == 0.0
    assert [p["robot_hours"] for p in c["points"]] == pytest.approx([200 / 36000, 400 / 36000, 500 / 36000])
    assert (p2["first_snapshot"], p2["last_snapshot"], p2["end_time"]) == (3, 4, 1004.0)


def test_offline_rows_are_ignored_and_aborted_ones_add_time_only():
    rows = [
        row(1, source="offline"),
        row(2, "aborted", n_steps=40),
        row(3, "failure"),
        row(4, "success"),
    ]
    c = episode_curves(rows, window=20)  # no control rate: hours from the rows' durations
    assert (c["episodes"], c["aborted"], c["hours_from"]) == (2, 1, "duration")
    assert c["robot_hours"] == pytest.approx((4.0 + 10.0 + 10.0) / 3600)
    (p,) = c["points"]
    assert p["n"] == 2 and p["success_rate"] == 0.5 and p["first_snapshot"] == 3


def test_rows_are_taken_in_snapshot_order():
    c = episode_curves([row(3, "success"), row(1, "failure"), row(2, "failure")], window=2)
    assert [p["success_rate"] for p in c["points"]] == [0.0, 1.0]


def test_a_human_label_is_what_counts():
    labelled = row(1, "failure", labelled_by="human")  # the catalog row carries the label, not the env's
    assert episode_curves([labelled], window=1)["points"][0]["success_rate"] == 0.0


def test_empty_and_zero_step_rows():
    assert episode_curves([], window=5) | {"points": None} == {
        "window": 5,
        "control_hz": None,
        "hours_from": "duration",
        "episodes": 0,
        "aborted": 0,
        "robot_hours": 0.0,
        "points": None,
    }
    (p,) = episode_curves([row(1, "failure", n_steps=0)], window=3, control_hz=5.0)["points"]
    assert p["intervention_rate"] == 0.0 and p["steps"] == 0


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        episode_curves([row(1)], window=0)


def test_row_hours():
    assert row_hours(row(1, n_steps=360), control_hz=0.1) == pytest.approx(1.0)
    assert row_hours({"duration_s": 7200.0}) == pytest.approx(2.0)


def test_evaluation_episodes_add_robot_time_but_no_rate():
    """Episodes run for an evaluation (the policy's evaluation mode, a chosen version) are not the fleet's
    learning rollouts: left out of the windows, their steps still count as robot time."""
    rows = [
        row(1, "failure"),
        row(2, "success", evaluation="ev1"),
        row(3, "success", evaluation="ev1"),
        row(4),
    ]
    c = episode_curves(rows, window=20, control_hz=10.0)
    (p,) = c["points"]
    assert c["episodes"] == 2 and p["n"] == 2 and p["success_rate"] == 0.5
    assert c["robot_hours"] == pytest.approx(400 / 10 / 3600)
