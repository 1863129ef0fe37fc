"""``fleetrl value report``: train (or load) a Robo-ValueRL value estimator on stored episodes and
diagnose it with the value-reliability metrics (Robo-ValueRL §3.1, §3.4).

Writes ``<out>/report.json`` (metrics, label scale, training log, settings), ``<out>/value_curves.png``
(predicted values along successful and failed episodes, after LWD Fig. 6) and, when it trained one,
``<out>/value_estimator.pt``. ``fleetrl/cli.py`` adds the command with ``add_value_parser``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_episodes(path: str, task: str | None = None) -> list:
    """Episodes of an ``EpisodeStore`` root (it has ``catalog.sqlite``; the catalog's labels win) or of a
    folder of episode files (every ``*.parquet`` below it, read as is; nothing is written there)."""
    from fleetrl.workers.data.episode_file import read_episode

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{path}: not a folder")
    if (root / "catalog.sqlite").is_file():
        from fleetrl.workers.data.store import load_store_episodes

        return load_store_episodes(str(root), task)
    files = sorted(p for p in root.rglob("*.parquet") if not any(s.startswith(".") for s in p.parts))
    episodes = [read_episode(str(f)) for f in files]
    return [ep for ep in episodes if task is None or ep.task == task]


def add_value_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``value`` (with its ``report`` subcommand) to the ``fleetrl`` subcommands."""
    value = subparsers.add_parser("value", help="Robo-ValueRL value estimator tools")
    vsub = value.add_subparsers(dest="value_command", required=True)
    rep = vsub.add_parser(
        "report", help="train a history-conditioned value estimator and report its reliability metrics"
    )
    rep.add_argument("--episodes", required=True, help="episode store root or folder of episode files")
    rep.add_argument("--task", default=None, help="task to use (required when the episodes have several)")
    rep.add_argument("--steps", type=int, default=1000, help="training steps")
    rep.add_argument("--out", required=True, help="output folder (report.json, value_curves.png)")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--checkpoint", default=None, help="load this value estimator instead of training")
    rep.add_argument(
        "--holdout", type=float, default=0.2, help="share of episodes held out for the metrics (0: none)"
    )
    rep.add_argument("--history-frames", type=int, default=None, help="past frames (0: no history)")
    rep.add_argument("--segments", type=int, default=5, help="equal subgoal segments when none annotated")
    rep.add_argument("--bump-eps", type=float, default=0.01, help="noise tolerance of the bump ratio")
    rep.set_defaults(func=cmd_value_report)
    return rep


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def plot_value_curves(
    model: Any, episodes: Sequence, values: Sequence, path: Path, title: str, error_fraction: float = 0.25
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
    import numpy as np

    from fleetrl.models.value_estimator import distribution_quantiles, remaining_time_labels
    from fleetrl.scoring.value_reliability import FAILED_OUTCOMES, failure_tail_segment

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


def cmd_value_report(args: argparse.Namespace) -> int:
    """Train or load the estimator, compute §3.4 metrics on the (held-out) episodes, write the report."""
    import numpy as np
    import torch

    from fleetrl.models.value_estimator import HistoryValueEstimator, ValueEstimatorConfig
    from fleetrl.scoring.value_reliability import ValueTrace, reliability_report
    from fleetrl.scoring.value_training import ValueTrainConfig, train_value_estimator, usable_episodes

    if args.steps < 1 or not 0.0 <= args.holdout < 1.0:
        print(
            f"error: need --steps >= 1 and 0 <= --holdout < 1 (got {args.steps}, {args.holdout})",
            file=sys.stderr,
        )
        return 2
    try:
        episodes = usable_episodes(load_episodes(args.episodes, args.task))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tasks = sorted({ep.task for ep in episodes})
    if not episodes:
        of = f" of task {args.task!r}" if args.task else ""
        print(f"error: no labelled episodes{of} in {args.episodes}", file=sys.stderr)
        return 2
    if len(tasks) > 1:
        print(f"error: episodes of several tasks {tasks}: pass --task", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    if args.checkpoint:
        try:
            ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
            model = HistoryValueEstimator.from_checkpoint(ckpt)
        except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            print(f"error: {args.checkpoint}: not a value-estimator checkpoint ({exc})", file=sys.stderr)
            return 2
        train, held, ckpt_path = [], episodes, args.checkpoint
    else:
        order = np.random.default_rng(args.seed).permutation(len(episodes))
        n_eval = int(len(episodes) * args.holdout) if args.holdout > 0 else 0
        n_eval = min(max(n_eval, 1 if args.holdout > 0 else 0), len(episodes) - 1)
        held = [episodes[i] for i in order[:n_eval]]
        train = [episodes[i] for i in order[n_eval:]]
        est = {} if args.history_frames is None else {"history_frames": args.history_frames}
        cfg = ValueTrainConfig(estimator=ValueEstimatorConfig(**est))
        n_ok = sum(ep.success for ep in train)
        print(f"training on {len(train)} episodes ({n_ok} successful) of {tasks[0]}, {args.steps} steps")

        def show(step: int, entry: dict[str, float]) -> None:
            shown = {k: v for k, v in entry.items() if k in ("loss", "value_mae", "lr", "elapsed_s")}
            line = "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
            print(f"  step {step}/{args.steps}: {line}", flush=True)

        model, history = train_value_estimator(train, cfg, steps=args.steps, seed=args.seed, progress=show)
        ckpt_path = str(out / "value_estimator.pt")
        torch.save(model.checkpoint(), ckpt_path)
    evaluated = held or episodes
    try:
        values = [model.predict(ep.observations) for ep in evaluated]
    except KeyError as exc:
        print(f"error: the episodes lack observation entry {exc} the estimator reads", file=sys.stderr)
        return 2
    traces = [
        ValueTrace(
            values=v,
            outcome=ep.outcome,
            boundaries=ep.meta.get("subgoal_boundaries"),
            error_segments=ep.meta.get("error_segments"),
            episode_id=ep.episode_id,
        )
        for ep, v in zip(evaluated, values, strict=True)
    ]
    metrics = reliability_report(traces, n_segments=args.segments, bump_eps=args.bump_eps)
    on = "all" if args.checkpoint else "held_out" if held else "training"
    summary = (
        f"MOR {_fmt(metrics['mor'])}  bump ratio {_fmt(metrics['bump_ratio'])}  "
        f"bump mag {_fmt(metrics['bump_magnitude'])}  error sensitivity {_fmt(metrics['error_sensitivity'])}  "
        f"error slope {_fmt(metrics['error_slope'])}"
    )
    png = out / "value_curves.png"
    title = f"{tasks[0]} ({on} episodes): {summary}"
    plotted = plot_value_curves(
        model, evaluated, values, png, title, error_fraction=metrics["settings"]["error_fraction"]
    )
    if not plotted:
        print("warning: matplotlib is not installed: value_curves.png not written", file=sys.stderr)
    report = {
        "command": "value report",
        "episodes": str(args.episodes),
        "task": tasks[0],
        "seed": args.seed,
        "steps": 0 if args.checkpoint else args.steps,
        "checkpoint": ckpt_path,
        "n_episodes": len(episodes),
        "n_train": len(train),
        "n_eval": len(evaluated),
        "evaluated_on": on,
        "label_scale": {"t_max": model.cfg.t_max, "c_fail": model.cfg.c_fail},
        "estimator": model.cfg.model_dump(mode="json"),
        "training": {"final": history[-1] if history else None, "history": history},
        "metrics": metrics,
        "plot": str(png) if plotted else None,
    }
    (out / "report.json").write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False))
    print(
        f"value report: {len(evaluated)} {on.replace('_', '-')} episodes ({metrics['n_success']} successful, "
        f"{metrics['n_failed']} failed): {summary} -> {out / 'report.json'}"
    )
    return 0
