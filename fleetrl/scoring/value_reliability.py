"""Value-reliability metrics of Robo-ValueRL (§3.4, Table 1), pure numpy.

Given a predicted value sequence ``v_0..v_{T-1}`` of one episode:

* Midpoint Ordering Rate (global task-level progress): for subgoal boundary timesteps ``b_0..b_K``
  (K intervals), ``m_j = v[floor((b_j + b_{j+1}) / 2)]`` and
  ``MOR = 1/(K-1) * sum_{j=0}^{K-2} 1[m_{j+1} > m_j]`` (strict); undefined (NaN) for K < 2.
* Bump Ratio = ``1/(T-1) * sum_t 1[v_{t+1} < v_t - eps]`` and Bump Magnitude =
  ``1/(T-1) * sum_t max(0, v_t - v_{t+1})`` over t = 0..T-2 (fluency, on successful episodes; the
  magnitude has no tolerance, as in the paper). Undefined for T < 2.
* Temporal error discrimination, per error segment ``E = [s, e)``: ``delta_i = v_ref_i - v_smooth_i``,
  Error Sensitivity ``S = max_{i in E} delta_i`` and Error Slope ``alpha`` = the least-squares slope of
  ``delta_i`` against i (value per step; NaN for a one-step segment).

Choices the paper leaves open, fixed here and deterministic:

* smoothing: a trailing (causal) moving average of ``smooth_window`` steps (shorter at the start), so the
  smoothed value at i never sees the future and the pre-error part is untouched by the error;
* normal-progress reference: a least-squares line through the last ``fit_window`` smoothed values
  before ``s``, with its slope clipped at >= 0 (normal progress does not go down), extrapolated over E
  and capped at ``ref_max`` (1.0: values are normalised progress); one pre-error step gives a flat
  reference; a segment starting at step 0 has no pre-error trajectory and is skipped;
* ``eps`` (the paper's noise tolerance ε_v, not given there) defaults to 0.01.

Fallbacks where our simulated episodes lack the paper's annotations (``reliability_report``):

* subgoal boundaries: ``trace.boundaries`` when given (e.g. from ``episode.meta['subgoal_boundaries']``),
  else ``n_segments`` equal-length intervals ``b_j = floor(j*T/n)``, j = 0..n (n capped at T);
* error segments: ``trace.error_segments`` when given (``meta['error_segments']``, [start, end) pairs),
  else, for an episode that failed (outcome ``failure`` or ``timeout``; the step of failure is the end
  of the episode), its last ``error_fraction`` of steps ``[T - max(1, round(f*T)), T)``; successful and
  aborted episodes without annotations contribute no error segment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FAILED_OUTCOMES = ("failure", "timeout")


@dataclass
class ValueTrace:
    """Predicted values of one episode plus what the metrics need to know about it."""

    values: np.ndarray  # [T] predicted values
    outcome: str = "success"
    boundaries: Sequence[int] | None = None  # annotated subgoal boundary timesteps b_0..b_K
    error_segments: Sequence[tuple[int, int]] | None = None  # annotated [start, end) error segments
    episode_id: str = ""


# --- global task-level progress ------------------------------------------------------------------------


def equal_boundaries(length: int, n_segments: int) -> np.ndarray:
    """``b_j = floor(j * T / n)``, j = 0..n with n = min(n_segments, T): the fallback subgoal boundaries."""
    n = max(min(n_segments, length), 0)
    return (np.arange(n + 1) * length) // max(n, 1)


def subgoal_midpoints(values: np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    """``m_j = v[floor((b_j + b_{j+1}) / 2)]`` for the K intervals of ``b_0..b_K`` (§3.4)."""
    v = np.asarray(values, dtype=np.float64)
    b = np.asarray(boundaries, dtype=np.int64)
    if np.any(np.diff(b) <= 0):
        raise ValueError(f"subgoal boundaries must increase strictly, got {b.tolist()}")
    idx = (b[:-1] + b[1:]) // 2
    if idx.size and (idx[0] < 0 or idx[-1] >= len(v)):
        raise ValueError(f"midpoints {idx.tolist()} fall outside the {len(v)} values")
    return v[idx]


def midpoint_ordering_rate(values: np.ndarray, boundaries: Sequence[int]) -> float:
    """MOR (§3.4): the share of adjacent intervals whose midpoint value rises; NaN with < 2 intervals."""
    m = subgoal_midpoints(values, boundaries)
    if len(m) < 2:
        return math.nan
    return float(np.mean(m[1:] > m[:-1]))


# --- fluency --------------------------------------------------------------------------------------------


def bump_ratio(values: np.ndarray, eps: float = 0.01) -> float:
    """``1/(T-1) sum_t 1[v_{t+1} < v_t - eps]`` (§3.4); NaN for T < 2."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return math.nan
    return float(np.mean(v[1:] < v[:-1] - eps))


def bump_magnitude(values: np.ndarray) -> float:
    """``1/(T-1) sum_t max(0, v_t - v_{t+1})`` (§3.4); NaN for T < 2."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return math.nan
    return float(np.mean(np.maximum(0.0, v[:-1] - v[1:])))


# --- temporal error discrimination -----------------------------------------------------------------------


def causal_smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: ``mean(v[max(0, i - window + 1) .. i])``."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    v = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(len(v))
    lo = np.maximum(i - window + 1, 0)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)


def _slope(y: np.ndarray) -> float:
    """Least-squares slope of y against 0..n-1; NaN for fewer than 2 points."""
    if len(y) < 2:
        return math.nan
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def normal_progress_reference(
    smoothed: np.ndarray, start: int, end: int, fit_window: int = 10, ref_max: float | None = 1.0
) -> np.ndarray:
    """Expected values over ``[start, end)`` had progress continued: the pre-error trend (see module doc)."""
    if start < 1:
        raise ValueError("an error segment starting at step 0 has no pre-error trajectory")
    pre = np.asarray(smoothed[max(0, start - fit_window) : start], dtype=np.float64)
    slope = max(_slope(pre), 0.0) if len(pre) >= 2 else 0.0
    last_x = len(pre) - 1
    level = pre.mean() + slope * (last_x - last_x / 2.0)  # fitted line at the last pre-error step
    ref = level + slope * np.arange(1, end - start + 1)
    return np.minimum(ref, ref_max) if ref_max is not None else ref


def error_deficits(
    values: np.ndarray,
    segment: tuple[int, int],
    smooth_window: int = 5,
    fit_window: int = 10,
    ref_max: float | None = 1.0,
) -> np.ndarray:
    """``delta_i = v_ref_i - v_smooth_i`` over the error segment ``[start, end)`` (§3.4)."""
    start, end = int(segment[0]), int(segment[1])
    if not 0 <= start < end <= len(values):
        raise ValueError(f"error segment {segment} is not inside the {len(values)} steps")
    smoothed = causal_smooth(values, smooth_window)
    return normal_progress_reference(smoothed, start, end, fit_window, ref_max) - smoothed[start:end]


def error_sensitivity(deficits: np.ndarray) -> float:
    """``S = max_i delta_i`` (§3.4)."""
    return float(np.max(deficits)) if len(deficits) else math.nan


def error_slope(deficits: np.ndarray) -> float:
    """``alpha = slope({delta_i})``: least-squares slope per step (§3.4); NaN for one step."""
    return _slope(np.asarray(deficits, dtype=np.float64))


def failure_tail_segment(length: int, error_fraction: float) -> tuple[int, int]:
    """Fallback error segment of a failed episode: its last ``max(1, round(f * T))`` steps."""
    n = max(1, round(error_fraction * length))
    return max(length - n, 0), length


# --- aggregation ----------------------------------------------------------------------------------------


def _mean(xs: Sequence[float]) -> float | None:
    finite = [x for x in xs if math.isfinite(x)]
    return float(np.mean(finite)) if finite else None


def _clean(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _score_trace(
    tr: ValueTrace,
    source: dict[str, int],
    *,
    n_segments: int,
    bump_eps: float,
    error_fraction: float,
    smooth_window: int,
    fit_window: int,
    ref_max: float | None,
) -> tuple[dict[str, Any], list[float], list[float]]:
    """One episode's metrics: (its per-episode row, the sensitivities and slopes of its error segments).
    Counts in ``source`` where its boundaries and error segments came from."""
    v = np.asarray(tr.values, dtype=np.float64)
    T = len(v)
    row: dict[str, Any] = {"episode_id": tr.episode_id, "outcome": tr.outcome, "length": T}
    if T:
        row["final_value"] = float(v[-1])
        row["mean_value"] = float(v.mean())
    if tr.outcome == "success" and T:
        if tr.boundaries is not None:
            b, source["boundaries_annotated"] = tr.boundaries, source["boundaries_annotated"] + 1
        else:
            b, source["boundaries_equal"] = equal_boundaries(T, n_segments), source["boundaries_equal"] + 1
        row["mor"] = midpoint_ordering_rate(v, b)
        row["bump_ratio"], row["bump_magnitude"] = bump_ratio(v, bump_eps), bump_magnitude(v)
    segments: list[tuple[int, int]] = []
    if tr.error_segments is not None:
        segments = [(int(s), int(e)) for s, e in tr.error_segments]
        source["errors_annotated"] += len(segments)
    elif tr.outcome in FAILED_OUTCOMES and T >= 2:
        segments = [failure_tail_segment(T, error_fraction)]
        source["errors_failure"] += 1
    ep_sens, ep_slope = [], []
    for seg in segments:
        if seg[0] < 1:
            continue
        d = error_deficits(v, seg, smooth_window, fit_window, ref_max)
        ep_sens.append(error_sensitivity(d))
        ep_slope.append(error_slope(d))
    if segments:
        row["error_sensitivity"], row["error_slope"] = _mean(ep_sens), _mean(ep_slope)
    return row, ep_sens, ep_slope


def reliability_report(
    episodes_values: Sequence[ValueTrace],
    *,
    n_segments: int = 5,
    bump_eps: float = 0.01,
    error_fraction: float = 0.25,
    smooth_window: int = 5,
    fit_window: int = 10,
    ref_max: float | None = 1.0,
) -> dict[str, Any]:
    """The §3.4 metrics over a set of episodes (fallbacks in the module docstring).

    MOR and the fluency metrics are averaged over successful episodes (where they are defined), error
    sensitivity and slope over error segments. Undefined values are ``None`` (JSON null).
    """
    settings = {
        "n_segments": n_segments,
        "bump_eps": bump_eps,
        "error_fraction": error_fraction,
        "smooth_window": smooth_window,
        "fit_window": fit_window,
        "ref_max": ref_max,
    }
    per_episode: list[dict[str, Any]] = []
    mors, ratios, mags, sens, slopes = [], [], [], [], []
    source = {"boundaries_annotated": 0, "boundaries_equal": 0, "errors_annotated": 0, "errors_failure": 0}
    finals: dict[str, list[float]] = {"success": [], "failed": []}
    for tr in episodes_values:
        row, ep_sens, ep_slope = _score_trace(tr, source, **settings)
        if row["length"]:
            key = "success" if tr.outcome == "success" else "failed" if tr.outcome in FAILED_OUTCOMES else ""
            if key:
                finals[key].append(row["final_value"])
        if "mor" in row:
            mors.append(row["mor"])
            ratios.append(row["bump_ratio"])
            mags.append(row["bump_magnitude"])
        sens += ep_sens
        slopes += ep_slope
        per_episode.append({k: _clean(x) if isinstance(x, float) else x for k, x in row.items()})
    return {
        "n_episodes": len(episodes_values),
        "n_success": sum(tr.outcome == "success" for tr in episodes_values),
        "n_failed": sum(tr.outcome in FAILED_OUTCOMES for tr in episodes_values),
        "mor": _mean(mors),
        "bump_ratio": _mean(ratios),
        "bump_magnitude": _mean(mags),
        "error_sensitivity": _mean(sens),
        "error_slope": _mean(slopes),
        "n_error_segments": sum(math.isfinite(s) for s in sens),
        "final_value_success": _mean(finals["success"]),
        "final_value_failed": _mean(finals["failed"]),
        "sources": source,
        "settings": settings,
        "per_episode": per_episode,
    }
