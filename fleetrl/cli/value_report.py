"""``fleetrl value report``: train (or load) a Robo-ValueRL value estimator on stored episodes and
diagnose it with the value-reliability metrics (Robo-ValueRL §3.1, §3.4).

Writes ``<out>/report.json`` (metrics, label scale, training log, settings), ``<out>/value_curves.png``
(predicted values along successful and failed episodes, after LWD Fig. 6) and, when it trained one,
``<out>/value_estimator.pt``. The computations are ``fleetrl.scoring.value_report``'s; this module parses
the arguments, loads the episodes and the estimator, and writes the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetrl.cli.common import add_command_group
from fleetrl.cli.progress import metrics_text, progress_bar

if TYPE_CHECKING:  # torch and the models load only when the command runs
    from fleetrl.models.value_estimator import HistoryValueEstimator
    from fleetrl.robots.episode import Episode


class _Refused(Exception):
    """Why no report can be made: printed as ``error: ...``, exit status 2."""


def load_episodes(path: str, task: str | None = None) -> list[Episode]:
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
    vsub = add_command_group(subparsers, "value", "Robo-ValueRL value estimator tools")
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


def _usable_episodes(args: argparse.Namespace) -> tuple[list[Episode], str]:
    """The labelled episodes the report is about and their one task."""
    from fleetrl.scoring.value_training import usable_episodes

    try:
        episodes = usable_episodes(load_episodes(args.episodes, args.task))
    except ValueError as exc:
        raise _Refused(str(exc)) from None
    tasks = sorted({ep.task for ep in episodes})
    if not episodes:
        of = f" of task {args.task!r}" if args.task else ""
        raise _Refused(f"no labelled episodes{of} in {args.episodes}")
    if len(tasks) > 1:
        raise _Refused(f"episodes of several tasks {tasks}: pass --task")
    return episodes, tasks[0]


def _load_estimator(path: str) -> HistoryValueEstimator:
    import torch

    from fleetrl.models.value_estimator import HistoryValueEstimator

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return HistoryValueEstimator.from_checkpoint(ckpt)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _Refused(f"{path}: not a value-estimator checkpoint ({exc})") from None


def _train_estimator(
    args: argparse.Namespace, train: list[Episode], task: str
) -> tuple[HistoryValueEstimator, list[dict[str, float]]]:
    """Train on ``train`` for ``--steps``, printing the loss as it goes; returns the model and its log."""
    from fleetrl.models.value_estimator import ValueEstimatorConfig
    from fleetrl.scoring.value_training import ValueTrainConfig, train_value_estimator

    est = {} if args.history_frames is None else {"history_frames": args.history_frames}
    cfg = ValueTrainConfig(estimator=ValueEstimatorConfig(**est))
    n_ok = sum(ep.success for ep in train)
    print(f"training on {len(train)} episodes ({n_ok} successful) of {task}, {args.steps} steps")

    with progress_bar("training the value estimator", args.steps) as update:
        return train_value_estimator(
            train, cfg, steps=args.steps, seed=args.seed,
            progress=lambda step, entry: update(step, metrics_text(entry, ("loss", "value_mae"))),
        )  # fmt: skip


def cmd_value_report(args: argparse.Namespace) -> int:
    """Train or load the estimator, compute §3.4 metrics on the (held-out) episodes, write the report."""
    try:
        return _value_report(args)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _value_report(args: argparse.Namespace) -> int:
    from fleetrl.scoring import value_report as vr

    if args.steps < 1 or not 0.0 <= args.holdout < 1.0:
        raise _Refused(f"need --steps >= 1 and 0 <= --holdout < 1 (got {args.steps}, {args.holdout})")
    episodes, task = _usable_episodes(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    if args.checkpoint:
        model = _load_estimator(args.checkpoint)
        train, held, ckpt_path = [], episodes, args.checkpoint
    else:
        import torch

        train, held = vr.holdout_split(episodes, args.holdout, args.seed)
        model, history = _train_estimator(args, train, task)
        ckpt_path = str(out / "value_estimator.pt")
        torch.save(model.checkpoint(), ckpt_path)
    evaluated = held or episodes
    try:
        values = vr.predict_values(model, evaluated)
    except KeyError as exc:
        raise _Refused(f"the episodes lack observation entry {exc} the estimator reads") from None
    metrics = vr.value_metrics(evaluated, values, n_segments=args.segments, bump_eps=args.bump_eps)
    on = "all" if args.checkpoint else "held_out" if held else "training"
    summary = vr.metrics_summary(metrics)
    png = out / "value_curves.png"
    title = f"{task} ({on} episodes): {summary}"
    error_fraction = metrics["settings"]["error_fraction"]
    plotted = vr.plot_value_curves(model, evaluated, values, png, title, error_fraction=error_fraction)
    if not plotted:
        print("warning: matplotlib is not installed: value_curves.png not written", file=sys.stderr)
    report = vr.value_report(
        model,
        metrics,
        source=str(args.episodes),
        task=task,
        seed=args.seed,
        steps=0 if args.checkpoint else args.steps,
        checkpoint=ckpt_path,
        n_episodes=len(episodes),
        n_train=len(train),
        n_eval=len(evaluated),
        evaluated_on=on,
        history=history,
        plot=str(png) if plotted else None,
    )
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    print(
        f"value report: {len(evaluated)} {on.replace('_', '-')} episodes ({metrics['n_success']} successful, "
        f"{metrics['n_failed']} failed): {summary} -> {out / 'report.json'}"
    )
    return 0
