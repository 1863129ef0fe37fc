"""Per-task learning curves from the episode catalog (pure functions: catalog rows in, JSON-ready dicts out).

The curves come from the durable catalog (``EpisodeStore.list``), not from any actor's memory, so they
survive a restart and cover every episode ever stored. Only *online* episodes count (offline demos say
nothing about how the fleet's policy does); the x axes are cumulative robot-hours and episode count, the
way fleet-learning papers (LWD, ALOE) plot success and intervention rates.

Aborted episodes (a robot cut off mid-episode) say nothing about the policy either, and evaluation episodes
(run in the policy's evaluation mode for ``POST .../evaluations``, catalog column ``evaluation``) are not the
fleet's learning rollouts: the steps of both add robot-hours, but they are left out of the windows and of
every rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_WINDOW = 20


def row_hours(row: Mapping[str, Any], control_hz: float | None = None) -> float:
    """Robot-hours of one catalog row: steps / control_hz when the rate is known (what the robot was
    scheduled to spend), else the row's observation-time span ``duration_s``."""
    if control_hz:
        return float(row.get("n_steps", 0)) / control_hz / 3600.0
    return float(row.get("duration_s", 0.0)) / 3600.0


def _window_point(rows: list[Mapping[str, Any]], episodes: int, hours: float) -> dict[str, Any]:
    n = len(rows)
    steps = sum(int(r.get("n_steps", 0)) for r in rows)
    iv_steps = sum(int(r.get("intervention_steps", 0)) for r in rows)
    successes = sum(r.get("outcome") == "success" for r in rows)
    intervened = sum(int(r.get("intervention_steps", 0)) > 0 for r in rows)
    clean = sum(r.get("outcome") == "success" and int(r.get("intervention_steps", 0)) == 0 for r in rows)
    return {
        "episodes": episodes,  # x: finished online episodes up to the end of this window
        "robot_hours": hours,  # x: cumulative robot-hours up to the end of this window
        "n": n,
        "steps": steps,
        "success_rate": successes / n,
        "intervention_rate": iv_steps / steps if steps else 0.0,  # fraction of steps under a human
        "intervened_episode_rate": intervened / n,  # fraction of episodes with any intervention
        "autonomous_success_rate": clean / n,  # succeeded with no intervention at all
        "first_snapshot": rows[0].get("snapshot"),
        "last_snapshot": rows[-1].get("snapshot"),
        "end_time": rows[-1].get("created"),
    }


def episode_curves(
    rows: Iterable[Mapping[str, Any]],
    window: int = DEFAULT_WINDOW,
    control_hz: float | None = None,
) -> dict[str, Any]:
    """Windowed curves over consecutive finished online episodes, in catalog (snapshot) order.

    Each point summarises ``window`` consecutive episodes (the last point may hold fewer: ``n`` says how
    many, so a live console shows something before the first full window) and sits at the cumulative
    robot-hours and episode count at the window's end.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ordered = sorted(
        (r for r in rows if r.get("source", "online") == "online"), key=lambda r: r.get("snapshot", 0)
    )
    points: list[dict[str, Any]] = []
    current: list[Mapping[str, Any]] = []
    hours = 0.0
    finished = aborted = 0
    for row in ordered:
        hours += row_hours(row, control_hz)
        if row.get("evaluation"):
            continue
        if row.get("outcome") == "aborted":
            aborted += 1
            continue
        finished += 1
        current.append(row)
        if len(current) == window:
            points.append(_window_point(current, finished, hours))
            current = []
    if current:
        points.append(_window_point(current, finished, hours))
    return {
        "window": window,
        "control_hz": control_hz,
        "hours_from": "steps" if control_hz else "duration",
        "episodes": finished,
        "aborted": aborted,
        "robot_hours": hours,
        "points": points,
    }
