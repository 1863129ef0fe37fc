"""Progress-critic quality metrics of the VLAC paper (§4.3, after GVL): VOC, VROC, VOC-F1, negative rate.

Definitions, as implemented here:

* progress values: ``v_0 = 0``, ``v_k = v_{k-1} + c_{k-1,k} (1 - v_{k-1})`` over the frames of an episode
  (eq. 7), where ``c_{k-1,k}`` is the critic's delta between consecutive (possibly strided) frames.
* VOC: Spearman rank correlation between the values and time (eq. 7 writes it with ``argsort(v)``
  against ``arange(T)``; the rank correlation of a permutation with the identity equals that of its
  inverse, so this is Spearman(v, t)). Ties get average ranks; a constant sequence, for which the
  correlation is undefined, is defined as VOC = 0 (no order information).
* VROC: the episode is reversed (frames T..0), the critic scores that sequence pairwise and the values
  are cumulated the same way; VROC is the rank correlation of those values with the *reversed* time
  order (the paper: "the predicted values should also be reversed"). A good critic gets VROC close to
  VOC, both near +1 (the paper's tables report VROC ≈ VOC > 0, and VOC-F1 is their harmonic mean, which
  only makes sense for two positive numbers). The plain Spearman of the reversed-episode values with
  its own time axis is ``-VROC`` (near -1 for a good critic).
* VOC-F1 = 2·VOC·VROC / (VOC + VROC) (eq. 8), computed on max(VOC, 0) and max(VROC, 0) and 0 when both
  are 0: the paper leaves negative inputs undefined (a harmonic mean of numbers of opposite sign is not
  a score); a critic that orders an episode backwards in either direction scores 0.
* negative rate (eq. 9): the fraction of evaluated consecutive pairs with a negative predicted delta.

Reading the numbers: VOC is rank-based, so any small but consistent drift of the deltas ranks as
order. And the recursion is convex in the deltas: for pure noise (zero-mean deltas, antisymmetric critic)
it biases VOC up and VROC down (noise with std 0.1 / 0.3 over 100 steps: VOC ≈ +0.19 / +0.69, VROC ≈
-0.29 / -0.71). VOC-F1, dominated by the smaller of the two, is robust to it and, rather than VOC alone,
separates successful from failed episodes; the cumulative progress ``v_T`` (``progress`` in the report)
is the other clear signal.

The recursion can grow without bound for negative deltas (1 - v grows geometrically), so the ranking
uses the equivalent key ``log(1 - v_k) = sum log(1 - c)`` (v is a decreasing function of it), which is
exact and never overflows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fleetrl.models.progress_critic import ProgressCritic
from fleetrl.robots.episode import Episode
from fleetrl.scoring.progress import detect_done, episode_frames, predict_deltas, predict_done


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 0-based."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    boundaries = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1], True])
    for lo, hi in zip(boundaries[:-1], boundaries[1:], strict=True):
        ranks[order[lo:hi]] = 0.5 * (lo + hi - 1)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation; 0.0 when either side is constant (or has fewer than 2 points)."""
    if len(x) != len(y):
        raise ValueError(f"lengths differ: {len(x)} vs {len(y)}")
    if len(x) < 2:
        return 0.0
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else 0.0


def progress_values(deltas: np.ndarray) -> np.ndarray:
    """Cumulative progress v_0..v_n from n consecutive deltas (eq. 7); float64, may reach -inf."""
    c = np.clip(np.asarray(deltas, dtype=np.float64), -1.0, 1.0)
    with np.errstate(divide="ignore", over="ignore"):
        return 1.0 - np.exp(np.r_[0.0, np.cumsum(np.log1p(-c))])


def _order_key(deltas: np.ndarray) -> np.ndarray:
    """A sequence with the same ranks as ``progress_values(deltas)`` that never overflows."""
    c = np.clip(np.asarray(deltas, dtype=np.float64), -1.0, 1.0)
    with np.errstate(divide="ignore"):
        return -np.r_[0.0, np.cumsum(np.log1p(-c))]


def voc(values: np.ndarray) -> float:
    """Value-order correlation of values along an episode (in time order) with time."""
    return spearman(np.asarray(values, dtype=np.float64), np.arange(len(values)))


def vroc(reversed_values: np.ndarray) -> float:
    """VROC from the values cumulated along the time-reversed episode, against the reversed time order."""
    return -voc(reversed_values)


def voc_from_deltas(deltas: np.ndarray) -> float:
    """VOC of the values cumulated from consecutive deltas along an episode."""
    return voc(_order_key(deltas))


def vroc_from_deltas(reversed_deltas: np.ndarray) -> float:
    """VROC from consecutive deltas of the reversed episode (delta(o_T, o_T-1), delta(o_T-1, o_T-2), ...)."""
    return vroc(_order_key(reversed_deltas))


def voc_f1(voc_value: float, vroc_value: float) -> float:
    """Harmonic mean of VOC and VROC (eq. 8), on their positive parts; 0 when both are <= 0."""
    a, b = max(voc_value, 0.0), max(vroc_value, 0.0)
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def negative_rate(deltas: np.ndarray) -> float:
    """Fraction of evaluated pairs whose predicted delta is negative (eq. 9); 0 for no pairs."""
    d = np.asarray(deltas)
    return float((d < 0).mean()) if d.size else 0.0


def strided(frames: np.ndarray, stride: int) -> np.ndarray:
    """Every ``stride``-th frame, always ending with the last one."""
    idx = np.arange(0, len(frames), stride)
    if idx[-1] != len(frames) - 1:
        idx = np.r_[idx, len(frames) - 1]
    return frames[idx]


def episode_scores(
    model: ProgressCritic, ep: Episode, stride: int = 1, done_threshold: float = 0.5, done_lo: float = 0.8
) -> dict[str, Any]:
    """VOC, VROC, VOC-F1, negative rate and done detection of one episode."""
    frames = episode_frames(ep, model.cfg.obs_key)
    f = strided(frames, stride)
    fwd = predict_deltas(model, f[:-1], f[1:], ep.task)
    rev = predict_deltas(model, f[::-1][:-1], f[::-1][1:], ep.task)
    v, vr = voc_from_deltas(fwd), vroc_from_deltas(rev)
    done_prob = predict_done(model, frames, ep.task)
    done_step = detect_done(done_prob, done_threshold)
    T = len(ep)
    early = done_prob[: int(np.ceil(done_lo * T))] if ep.success else done_prob
    return {
        "episode_id": ep.episode_id,
        "outcome": ep.outcome,
        "steps": T,
        "voc": v,
        "vroc": vr,
        "voc_f1": voc_f1(v, vr),
        "negative_rate": negative_rate(fwd),
        "progress": float(progress_values(fwd)[-1]),
        "final_done_prob": float(done_prob[-1]),
        "done_step": done_step,
        "false_done_rate": float((early >= done_threshold).mean()) if early.size else 0.0,
    }


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("voc", "vroc", "negative_rate", "progress")}
    return {
        "n": len(rows),
        **mean,
        "voc_f1": voc_f1(mean["voc"], mean["vroc"]),
        "voc_f1_per_episode": float(np.mean([r["voc_f1"] for r in rows])),
        "final_done_prob": float(np.mean([r["final_done_prob"] for r in rows])),
        "done_detected": float(np.mean([r["done_step"] is not None for r in rows])),
        "false_done_rate": float(np.mean([r["false_done_rate"] for r in rows])),
    }


def critic_report(
    model: ProgressCritic,
    episodes: Sequence[Episode],
    stride: int = 1,
    done_threshold: float = 0.5,
    done_lo: float = 0.8,
) -> dict[str, Any]:
    """Metrics over episodes, overall and split by outcome ('success' vs every other outcome, 'failed').

    Each group reports means of per-episode VOC, VROC, negative rate and final cumulative progress;
    ``voc_f1`` is the F1 of the mean VOC and mean VROC (as a dataset-level number in the paper's
    tables), ``voc_f1_per_episode`` the mean of per-episode F1s. Done detection: ``final_done_prob`` (mean
    done probability of the last frame), ``done_detected`` (share of episodes where the done head fires at
    all) and ``false_done_rate`` (share of frames where it fires too early: before ``done_lo``·T on
    successful episodes, anywhere on failed ones). ``episodes`` lists the per-episode rows.
    """
    rows = [episode_scores(model, ep, stride, done_threshold, done_lo) for ep in episodes]
    return {
        **_aggregate(rows),
        "success": _aggregate([r for r in rows if r["outcome"] == "success"]),
        "failed": _aggregate([r for r in rows if r["outcome"] != "success"]),
        "episodes": rows,
    }
