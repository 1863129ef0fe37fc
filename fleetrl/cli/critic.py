"""``fleetrl critic train``: train a VLAC-style pairwise progress critic on stored episodes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fleetrl.cli.common import add_command_group
from fleetrl.cli.progress import metrics_text, progress_bar


def cmd_critic_train(args: argparse.Namespace) -> int:
    """Train a pairwise progress critic on stored episodes; report VOC metrics on a held-out split."""
    import numpy as np
    import torch

    from fleetrl.scoring.critic_metrics import critic_report
    from fleetrl.scoring.progress import ProgressTrainConfig, train_progress_critic
    from fleetrl.workers.data.store import load_store_episodes

    episodes = load_store_episodes(args.episodes)
    if args.failed:
        episodes += load_store_episodes(args.failed)
    if not any(ep.success for ep in episodes):
        print(f"error: no successful episodes in {args.episodes}", file=sys.stderr)
        return 2
    order = np.random.default_rng(args.seed).permutation(len(episodes))
    n_eval = max(1, int(len(episodes) * args.holdout)) if args.holdout > 0 else 0
    held = [episodes[i] for i in order[:n_eval]]
    train = [episodes[i] for i in order[n_eval:]]

    print(
        f"training on {len(train)} episodes ({sum(e.success for e in train)} successful), {args.steps} steps"
    )
    with progress_bar("training the critic", args.steps) as update:
        model, _ = train_progress_critic(
            train, ProgressTrainConfig(), steps=args.steps, seed=args.seed,
            callback=lambda step, entry: update(step, metrics_text(entry)),
        )  # fmt: skip
    torch.save(model.checkpoint(), args.out)
    print(f"checkpoint written to {args.out}")
    if held:
        report = critic_report(model, held)
        print(f"held-out ({len(held)} episodes): {report}")
    return 0


def add_critic_parser(subparsers: Any) -> None:
    """Add ``critic`` (with its ``train`` subcommand) to the ``fleetrl`` subcommands."""
    crsub = add_command_group(subparsers, "critic", "reward critics")
    ctrain = crsub.add_parser("train", help="train a VLAC-style progress critic on stored episodes")
    ctrain.add_argument("--episodes", required=True, help="episode store folder (e.g. from `demos collect`)")
    ctrain.add_argument("--failed", default=None, help="optional folder of failed episodes (negatives)")
    ctrain.add_argument("--steps", type=int, default=1000, help="training steps")
    ctrain.add_argument(
        "--holdout", type=float, default=0.2, help="share of episodes held out for the report"
    )
    ctrain.add_argument("--seed", type=int, default=0)
    ctrain.add_argument("--out", required=True, help="checkpoint path (use it in config critic.tasks)")
    ctrain.set_defaults(func=cmd_critic_train)
