"""The value report's computations (Robo-ValueRL §3.1, §3.4): from episodes and a trained value estimator
to the reliability metrics, the report's JSON dict and the value-curve plot (after LWD Fig. 6).

Why apart from the command: these are pure functions of episodes and a model, testable and reusable
without argparse or a store; ``fleetrl value report`` (``fleetrl/cli/value_report.py``) loads the
episodes, trains or loads the estimator and writes the files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fleetrl.models.value_estimator import (
    HistoryValueEstimator,
    distribution_quantiles,
    remaining_time_labels,
)
from fleetrl.robots.episode import Episode
from fleetrl.scoring.value_reliability import (
    FAILED_OUTCOMES,
    ValueTrace,
    failure_tail_segment,
    reliability_report,
)


def holdout_split(
    episodes: Sequence[Episode], holdout: float, seed: int
) -> tuple[list[Episode], list[Episode]]:
    """(train, held out): a seeded shuffle, ``holdout`` of the episodes held out (at least one when
    ``holdout`` > 0, and at least one left to train on)."""
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_eval = int(len(episodes) * holdout) if holdout > 0 else 0
    n_eval = min(max(n_eval, 1 if holdout > 0 else 0), len(episodes) - 1)
    return [episodes[i] for i in order[n_eval:]], [episodes[i] for i in order[:n_eval]]


def predict_values(model: HistoryValueEstimator, episodes: Sequence[Episode]) -> list[np.ndarray]:
    """The estimator's value along each episode; KeyError when an episode lacks an observation it reads."""
    return [model.predict(ep.observations) for ep in episodes]


def value_metrics(
    episodes: Sequence[Episode], values: Sequence[np.ndarray], n_segments: int, bump_eps: float
) -> dict[str, Any]:
    """The §3.4 reliability metrics of ``values`` along ``episodes``, with the episodes' annotated subgoal
    boundaries and error segments (``meta``) where they have them."""
    traces = [
        ValueTrace(
            values=v,
            outcome=ep.outcome,
            boundaries=ep.meta.get("subgoal_boundaries"),
            error_segments=ep.meta.get("error_segments"),
            episode_id=ep.episode_id,
        )
        for ep, v in zip(episodes, values, strict=True)
    ]
    return reliability_report(traces, n_segments=n_segments, bump_eps=bump_eps)


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def metrics_summary(metrics: dict[str, Any]) -> str:
    """The headline metrics on one line (the plot's title and the command's last line)."""
    return (
        f"MOR {_fmt(metrics['mor'])}  bump ratio {_fmt(metrics['bump_ratio'])}  "
        f"bump mag {_fmt(metrics['bump_magnitude'])}  error sensitivity {_fmt(metrics['error_sensitivity'])}  "
        f"error slope {_fmt(metrics['error_slope'])}"
    )


def _jsonable(x: Any) -> Any:
    """``x`` with string keys and non-finite floats as None, so strict JSON can hold it."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def value_report(
    model: HistoryValueEstimator,
    metrics: dict[str, Any],
    *,
    source: str,
    task: str,
    seed: int,
    steps: int,
    checkpoint: str,
    n_episodes: int,
    n_train: int,
    n_eval: int,
    evaluated_on: str,
    history: list[dict[str, float]],
    plot: str | None,
) -> dict[str, Any]:
    """The report (JSON-ready): where the episodes came from, the settings, the estimator's label scale
    and config, its training log and the metrics."""
    return _jsonable(
        {
            "command": "value report",
            "episodes": source,
            "task": task,
            "seed": seed,
            "steps": steps,
            "checkpoint": checkpoint,
            "n_episodes": n_episodes,
            "n_train": n_train,
            "n_eval": n_eval,
            "evaluated_on": evaluated_on,
            "label_scale": {"t_max": model.cfg.t_max, "c_fail": model.cfg.c_fail},
            "estimator": model.cfg.model_dump(mode="json"),
            "training": {"final": history[-1] if history else None, "history": history},
            "metrics": metrics,
            "plot": plot,
        }
    )


def plot_value_curves(
    model: HistoryValueEstimator,
    episodes: Sequence[Episode],
    values: Sequence[np.ndarray],
    path: Path,
    title: str,
    error_fraction: float = 0.25,
) -> bool:
    """Predicted value (mean, and the 10-90 % band of the first episode) along up to 4 successful and 4
    failed episodes, with their remaining-time labels dashed and the fallback error segment of failed
    episodes shaded. False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = model.cfg
    groups = {
        "successful": [i for i, ep in enumerate(episodes) if ep.success][:4],
        "failed": [i for i, ep in enumerate(episodes) if ep.outcome in FAILED_OUTCOMES][:4],
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    centres = model.centres.cpu().numpy()
    for ax, (name, idx) in zip(axes, groups.items(), strict=True):
        for n, i in enumerate(idx):
            ep, v = episodes[i], values[i]
            color = plt.cm.tab10(n)
            t = np.arange(len(v))
            if n == 0:
                q = distribution_quantiles(model.predict_probs(ep.observations), centres, (0.1, 0.9))
                ax.fill_between(t, q[0], q[1], color=color, alpha=0.2, lw=0, label="10-90 % (first)")
            ax.plot(t, v, color=color, lw=1.5, label=f"{ep.episode_id[:16]} ({ep.outcome})")
            label = remaining_time_labels(len(ep), ep.success, cfg.c_fail, cfg.t_max)
            ax.plot(t, label, color=color, lw=0.8, ls="--")
            if name == "failed" and ep.meta.get("error_segments") is None:
                s, e = failure_tail_segment(len(ep), error_fraction)
                ax.axvspan(s, e - 1, color=color, alpha=0.06)
        ax.set_title(f"{name} episodes ({len(idx)} shown)" if idx else f"no {name} episodes")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if idx:
            ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("predicted value (dashed: label)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
